"""napari plugin for deconv3d (npe2). Widgets arrive with the plugin issue."""
