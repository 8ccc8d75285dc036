"""The COSMOS source bank: catalogue, rendering, noise, morphology, colours, layout."""
