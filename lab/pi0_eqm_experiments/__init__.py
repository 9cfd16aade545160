"""Studies on top of the ``pi0_eqm`` library (never imported by it; they import only its public modules)."""
