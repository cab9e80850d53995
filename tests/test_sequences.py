from collections import Counter

import pytest

from proseflow.physics.sequences import (
    AMINO_ACIDS,
    SequenceError,
    check_disjoint,
    draw_balanced,
    draw_uniform,
    validate_sequence,
)
from proseflow.stages.settings import (
    ConfigError,
    check_config,
    explicit_train,
    load_config,
    md_protocol,
    n_batches,
    sequence_set,
)


def test_invalid_letter_is_named():
    with pytest.raises(SequenceError, match="'X'"):
        validate_sequence("AXG")
    with pytest.raises(SequenceError, match="length 11 > maximum 10"):
        validate_sequence("A" * 11, max_length=10)


def test_uniform_draw_counts_distinct_seeded_and_excluding():
    counts = {2: 50, 3: 40}
    a = draw_uniform(counts, seed=3, exclude=["AA", "CE"])
    assert a == draw_uniform(counts, seed=3, exclude=["AA", "CE"])
    assert a != draw_uniform(counts, seed=4, exclude=["AA", "CE"])
    assert len(a) == len(set(a)) == 90
    assert Counter(map(len, a)) == {2: 50, 3: 40}
    assert not {"AA", "CE"} & set(a)
    assert set("".join(a)) <= set(AMINO_ACIDS)


def test_uniform_draw_refuses_impossible_counts():
    with pytest.raises(SequenceError, match="only 399 exist"):
        draw_uniform({2: 400}, seed=0, exclude=["AA"])


def test_balanced_draw_uses_each_amino_acid_equally():
    seqs = draw_balanced(10, 4, seed=1)  # 40 letters = twice the alphabet, before any repeat is redrawn
    assert len(seqs) == len(set(seqs)) == 10 and all(len(s) == 4 for s in seqs)
    counts = Counter("".join(seqs))
    assert set(counts) == set(AMINO_ACIDS) and set(counts.values()) == {2}


def test_overlap_between_sets_is_named():
    with pytest.raises(SequenceError, match="'DGVAHALS'.*test.*train|'DGVAHALS'.*train.*test"):
        check_disjoint({"test": ["DGVAHALS"], "train": ["AA", "DGVAHALS"]})


def test_paper_config_is_valid_and_batched():
    config = load_config("config.yaml")
    check_config(config)
    assert len(sequence_set(config, "test")) == 90 and len(sequence_set(config, "val")) == 30
    assert n_batches(config, "train") == -(-21_700 // 64)


def test_bad_config_values_are_named():
    config = load_config("config.yaml")
    config["sequences"]["test"] = ["AA", "ABZ"]
    with pytest.raises(ConfigError, match="sequences.test.*'B'"):
        check_config(config)
    config = load_config("config.yaml")
    config["sequences"]["train_counts"] = {2: 10, 12: 3}
    with pytest.raises(ConfigError, match="length 12 outside"):
        check_config(config)
    config = load_config("config.yaml")
    config["md"]["reference"]["length_ps"] = 10.05
    with pytest.raises(ConfigError, match="md.reference"):
        check_config(config)


def test_generated_sets_are_disjoint():
    config = load_config("config.yaml")
    config["sequences"]["val"] = {"generate": {2: 10, 4: 10}}
    config["sequences"]["test"] = {"generate": {2: 30, 4: 30}}
    check_config(config)
    val, test = sequence_set(config, "val"), sequence_set(config, "test")
    assert len(test) == 60 and not set(val) & set(test)


def test_sequence_files_keep_NA_as_a_sequence(tmp_path):
    """'NA' (Asn-Ala) is in the paper's 2AA test set; pandas reads it as a missing value by default."""
    from proseflow.physics.sequences import read_sequences, to_frame

    to_frame(["NA", "NAN", "AA"]).to_csv(tmp_path / "s.csv", index=False)
    assert read_sequences(tmp_path / "s.csv") == ["NA", "NAN", "AA"]


def test_single_system_study_needs_the_explicit_flag():
    """configs/study_aa.yaml: AA trains, validates and is evaluated; only with allow_train_test_overlap."""
    config = load_config("config.yaml", "configs/study_aa.yaml")
    check_config(config)
    assert explicit_train(config) == ["AA"] and n_batches(config, "train") == 1
    assert md_protocol(config, "train").replicas == 8 and md_protocol(config, "reference").replicas == 10
    config["sequences"]["allow_train_test_overlap"] = False
    with pytest.raises(ConfigError, match="'AA'.*allow_train_test_overlap"):
        check_config(config)
    config = load_config("config.yaml")
    config["sequences"]["train"] = ["AA", "AX"]
    with pytest.raises(ConfigError, match="sequences.train.*'X'"):
        check_config(config)
    config["sequences"]["train"] = ["CE"]  # a paper test dipeptide
    with pytest.raises(ConfigError, match="'CE'"):
        check_config(config)


def test_lower_case_sequence_suggests_upper_case():
    import pytest

    from proseflow.physics.sequences import SequenceError, validate_sequence

    with pytest.raises(SequenceError, match=r"upper-case one-letter .*did you mean GYDP\?"):
        validate_sequence("gydp")
    with pytest.raises(SequenceError, match="invalid residue letter"):
        validate_sequence("GXDP")
