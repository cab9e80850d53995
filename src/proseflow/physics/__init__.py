"""Physics: sequences, peptide structures, the OpenMM system, MD, trajectories, energies."""
