"""The fingerprint of a batch's :class:`~deconv3d.pipeline.settings.Settings`: the hash of everything that
changes the output, which a completion record holds (:mod:`~deconv3d.pipeline.completion_records`), and the
rules of what it counts: settings a method ignores at their defaults, settings added later left out at
theirs, the numerical rules an output follows (the TV term's, the acceleration floor, how saturated
voxels are fitted, Wiener's gain at zero frequency and how deep it mirrors, the most iterations
``iterations = "auto"`` tries), and the hashes earlier versions wrote for the same command.
:class:`Fingerprinted` gives :class:`~deconv3d.pipeline.settings.Settings` these methods."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from deconv3d._saturation import SATURATION_FIT
from deconv3d.pipeline.auto_iterations import AUTO_MAX_ITERATIONS
from deconv3d.pipeline.settings_checks import _many

__all__ = ["Fingerprinted", "tv_term_rule"]


def tv_term_rule() -> str:
    """The rule of RL-TV's TV term that this version follows (its differences), which the settings'
    hash holds and a trained network's provenance names."""
    from deconv3d.classical import _iterate

    return _iterate.TV_DIFFERENCES[0]


class Fingerprinted:
    """The fingerprint methods of :class:`~deconv3d.pipeline.settings.Settings` (a frozen dataclass, whose
    fields they hash)."""

    def fingerprint(self, legacy: bool = False) -> str:
        """Hash of everything that changes the output (not the file pattern).

        For ssl, the precision ``amp`` resolves to, not ``amp`` itself: a batch resumed on a CPU
        without AMX (or with ``ONEDNN_MAX_CPU_ISA`` limited) computes in float32, and had added
        float32 outputs to the bfloat16 ones under the same records.

        A setting the method ignores (:data:`_METHOD_ONLY`; ``pyramid_levels`` for TIFF outputs)
        counts at its default: ``--iterations 5`` with ``--method wiener`` redid every finished
        file; so do the microscope's parameters with a PSF file, and ``ns`` with the gaussian model,
        which has no sample index. (At the default, not left out:
        the records written before still match.) ``legacy=True`` gives the hash of the versions
        before that rule, which counted them as given: a record of theirs with such a setting still
        matches the same command (:meth:`finished_fingerprints` lists every hash a record may hold).
        """
        return self._hash({} if legacy else self._ignored_at_defaults())

    def finished_fingerprints(self) -> tuple:
        """The fingerprints a completion record of these settings may hold, this version's first:
        also the ``legacy`` one, and that of the versions that left ignored settings at their
        defaults but counted several wavelengths beside a PSF file (they set how many channels a
        file had then). Without it, such a batch (a config's ``wavelength = [0.45, 0.65]`` with
        ``psf``) was redone in full by the same command, its records taken for other settings."""
        return tuple(dict.fromkeys(self._hash(at_defaults) for at_defaults in self._hashed_variants()))

    def _hashed_variants(self) -> tuple:
        """The ``at_defaults`` of :meth:`finished_fingerprints`' hashes, in its order (this version's,
        the legacy one's, then the three earlier rules')."""
        if self._wiener_boundary_counts():  # (every earlier version ran Wiener with the reflect boundary)
            return (self._ignored_at_defaults(),)
        return (self._ignored_at_defaults(), {}, self._ignored_at_defaults(wavelengths_set_channels=True),
                self._ignored_at_defaults(gaussian_ns_counted=True), self._ignored_at_defaults(auto_accelerated=True))

    def fingerprints_without_tv_rule(self) -> tuple:
        """For ssl that trains, the :meth:`finished_fingerprints` without the TV term's rule: those of
        the versions that had the symmetric rule but did not hold it in the hash. A record of theirs is
        finished where the output's provenance names the rule (its reference's ``tv_differences``:
        :func:`~deconv3d.pipeline.completion_records.is_finished`); rl-tv's provenance does not, and is
        redone."""
        if not (self.method == "ssl" and self.model is None):
            return ()
        return tuple(dict.fromkeys(self._hash(at_defaults, tv_rule=False) for at_defaults in self._hashed_variants()))

    def _hash(self, at_defaults: dict, tv_rule: bool = True) -> str:
        """The fingerprint with the settings ``at_defaults`` names counted at the values it gives
        (``tv_rule=False``: without the TV term's rule, as before 9bb15de)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if k not in ("pattern", "amp") and not (k in _ADDED_LATER and v == _ADDED_LATER[k])
                  and not (k in _SSL_ONLY and self.method != "ssl")
                  and not (k in _TRAINING_ONLY and self.train_steps is None)}
        fields.update(at_defaults)
        if self.method == "wiener" and fields["boundary"] == "reflect":  # its default, as the versions hashed it
            fields["boundary"] = "bertero"  # that ignored the boundary for Wiener (legacy=True: as given, RL's default)
        fields["device"] = self.device_kind()
        if self.method == "ssl":  # (so an ssl batch finished by an earlier version is redone once)
            fields["precision"] = self.precision()
        fields.update(self._rule_fields(tv_rule))
        if self.memory_limit is not None:  # 4G, 4000MB and 4GB alike (records made with "4GB" still match)
            from deconv3d.pipeline.system_memory import format_bytes, parse_memory

            fields["memory_limit"] = format_bytes(parse_memory(self.memory_limit))
        for key in ("psf", "model"):
            if fields[key]:
                from deconv3d.omezarr.writing import unchanged_file_sha256

                fields[key] = [unchanged_file_sha256(f) for f in _many(fields[key])]
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _rule_fields(self, tv_rule: bool = True) -> dict:
        """The numerical rules this configuration's output follows, which the fingerprint holds so that a batch
        finished under an earlier rule is redone once (``tv_rule=False``: without the TV term's rule)."""
        rules: dict = {}
        if tv_rule and (self.method == "rl-tv" or (self.method == "ssl" and self.model is None)):
            # the TV term's rule (RL-TV, and a trained network's reference): a batch finished before 21fbe06 is redone once
            rules["tv_differences"] = tv_term_rule()
        if self.accelerated_rl() and self.iterations >= 3:  # the least adaptive step (from the third iteration
            from deconv3d.classical._iterate import ALPHA_FLOOR  # on): a batch finished before it had one is redone once

            rules["acceleration_floor"] = ALPHA_FLOOR
        if self.method in ("rl", "rl-tv") and self.saturation != "none":
            # how the flagged voxels are fitted: a batch finished when they were left out of the fit is redone once
            rules["saturation_fit"] = SATURATION_FIT
        if self.iterations == "auto" and self.method in ("rl", "rl-tv"):  # the most the search tries: a batch
            rules["auto_max_iterations"] = AUTO_MAX_ITERATIONS  # finished under the cap of 100 is redone once
        if self.method == "wiener":  # its gain at zero frequency: a batch finished before acf0a16 (whose outputs
            from deconv3d.classical.wiener import DC_GAIN, MIRROR_DEPTH  # were balance / (1 + balance) dimmer) is

            rules["wiener_dc_gain"] = DC_GAIN  # redone once; so is one finished while the reflect boundary
            rules["wiener_mirror"] = MIRROR_DEPTH  # mirrored by the PSF's size (3e-2 of the peak at the faces)
        if self.method == "wiener" and self.boundary == "reflect":  # and one whose blocks mirrored their faces
            from deconv3d.pipeline.methods import INNER_MIRROR  # inside the volume twice the filter's reach deep

            rules["wiener_inner_mirror"] = INNER_MIRROR  # (the zero boundary pads those faces as before)
        return rules

    def _wiener_boundary_counts(self) -> bool:
        """Whether the boundary is in a Wiener run's fingerprint: only where it is not Wiener's default,
        reflect, which every version before ``--boundary`` reached Wiener ran with (and hashed at its
        default, RL's bertero): a batch they finished is not redone, one with the zero boundary is."""
        return self.method == "wiener" and self.boundary != "reflect"

    def _ignored_at_defaults(self, wavelengths_set_channels: bool = False, gaussian_ns_counted: bool = False,
                             auto_accelerated: bool = False) -> dict:
        """The settings this configuration's method (or output format, or PSF model) ignores, at their
        defaults; ``wavelengths_set_channels``: as the versions did for which several wavelengths beside
        a PSF file still set the channel count (they kept them in the hash); ``gaussian_ns_counted``: as the
        versions did that kept the gaussian model's ``ns`` (which it does not read) in the hash, so
        that a batch they finished with ``ns = 1.45`` is skipped, not redone. ``accelerate`` with
        ``iterations = "auto"``, whose chosen counts run without acceleration, is among them (with and
        without ``--no-accelerate`` a batch had redone its finished files); ``auto_accelerated``: as the
        versions did that kept it in the hash, so that a batch they finished with it is skipped, not redone."""
        ignored = [k for k, methods in _METHOD_ONLY.items() if self.method not in methods]
        if self._wiener_boundary_counts():
            ignored.remove("boundary")
        ignored += ["accelerate"] if self.iterations == "auto" and not auto_accelerated else []
        ignored += ["pyramid_levels"] if self.output_format != "zarr" else []
        if self.psf_model is None:  # a PSF file (or a model's own): the optics generate nothing
            ignored += ["na", "ni", "ns", "depth"]
            ignored += [] if wavelengths_set_channels and len(_many(self.wavelength)) > 1 else ["wavelength"]
        elif self.psf_model == "gaussian" and not gaussian_ns_counted:  # it has no sample index
            ignored += ["ns"]
        return {f.name: f.default for f in dataclasses.fields(self) if f.name in ignored}


#: Settings added after batch folders held completion records, and their defaults: left out of the
#: fingerprint at those, so that the records of a batch started before still match.
_ADDED_LATER = {"train_steps": None, "seed": 0, "saturation": "none"}
#: Settings that change the output of method ssl only (others leave them out of the fingerprint).
_SSL_ONLY = ("train_steps", "seed")
#: Settings that change the output of some methods only (as ``deconvolve`` warns about them).
_METHOD_ONLY = {"iterations": ("rl", "rl-tv"), "accelerate": ("rl", "rl-tv"), "boundary": ("rl", "rl-tv"),
                "tv_weight": ("rl-tv",), "balance": ("wiener",), "tta": ("ssl",), "band_limit": ("ssl",)}
#: Settings of the training with train_steps: a trained --model leaves them out of the fingerprint.
_TRAINING_ONLY = ("seed",)
