"""Legacy Survey data: bricks, catalogues, coadd cutouts, depth, PSF models, the demo sky."""
