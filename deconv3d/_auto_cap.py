"""The most iterations ``--iterations auto`` tries, in a module of its own: the command line reads it without
importing the pipeline (and numpy, which ``deconv3d --help`` does not need), the batch fingerprint without the
command line. :mod:`deconv3d.pipeline.auto_iterations` re-exports it."""

#: The most iterations ``--iterations auto`` tries (choose_iterations' ``max_iterations``), in memory, on a
#: chunked run's crop and in a batch, whose settings' fingerprint holds it. It was 100, where the truth-picked
#: count lay past 200 (Gibson-Lanni PSF, 1000 photons up) and 0.9-2.6 dB were lost. On a 32 x 96 x 96 phantom
#: (Gibson-Lanni PSF at NA 1.3, Poisson noise, seed 0) 400 gained 1.8 dB at 1000 photons (stopped at 371 by the
#: error's rise; truth-picked 329) and 3.9 dB at 10^4 (stopped at 400; the error was still falling at 1000, where
#: the restoration was 1.3 dB better still); the search and run took 83 s against 31 s at 1000 photons and 132 s
#: against 21 s at 10^4 (2 threads, a shared 2-core CPU). Where the error stops falling first, nothing changes.
AUTO_MAX_ITERATIONS = 400
