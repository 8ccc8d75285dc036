"""Pure NumPy/GalSim/lenstronomy code and the pandas UDFs that call it. No Spark session here."""
