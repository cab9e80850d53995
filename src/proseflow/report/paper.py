"""The paper's numbers (PAPER.md section 6) that the summary tables show beside this run's."""

NA = None  # "-" in the paper


PAPER_TABLE2 = {
    "Prose": {"2AA": (0.191, 0.371, 0.210, NA), "4AA": (0.071, 0.932, 0.752, 0.367),
              "8AA": (0.011, 10.038, 2.456, 0.988)},
    "TarFlow": {"2AA": (0.134, 0.452, 0.193, NA), "4AA": (0.045, 1.260, 0.924, 0.492),
                "8AA": (0.008, 11.298, 2.733, 1.087)},
    "ECNF++ (TBG)": {"2AA": (0.024, 3.470, 0.302, NA), "4AA": (0.008, 10.032, 1.121, 0.572),
                     "8AA": (NA, NA, NA, NA)},
    "BioEmu": {"2AA": (NA, 45.3, 1.208, NA), "4AA": (NA, 90.1, 2.037, 1.479), "8AA": (NA, 193.9, 4.638, 1.601)},
}


PAPER_TABLE4 = {
    "SNIS": {"2AA": (0.271, 0.165, NA), "4AA": (0.665, 0.613, 0.349), "8AA": (9.386, 2.012, 0.964)},
    "SMC continuous": {"2AA": (0.318, 0.177, NA), "4AA": (0.764, 0.688, 0.338), "8AA": (10.563, 2.642, 1.049)},
    "SMC discrete": {"2AA": (0.249, 0.147, NA), "4AA": (0.653, 0.721, 0.400), "8AA": (7.672, 2.524, 1.086)},
    "Self-improve + SNIS": {"2AA": (0.265, 0.171, NA), "4AA": (0.568, 0.611, 0.345),
                            "8AA": (8.886, 2.071, 0.966)},
}


PAPER_MODEL_NAMES = {"Prose": "prose", "TarFlow": "tarflow", "ECNF++ (TBG)": "ecnf", "BioEmu": "bioemu"}


PAPER_SAMPLER_NAMES = {"SNIS": "snis", "SMC continuous": "smc_ula", "SMC discrete": "smc_mala",
                       "Self-improve + SNIS": "self_improve"}
