"""Stage 1-2 targets: DESI LRG cuts, target rows, HEALPix splits, real-lens anchors."""
