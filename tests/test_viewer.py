"""The 3D viewer's pieces: superposition, PDB text, the TICA states (evaluation.conformations), the library
lookup and its fallback (report.viewer)."""

import io
import json
import tarfile

import mdtraj
import numpy as np
import pytest

from proseflow.evaluation import conformations
from proseflow.evaluation.metrics import fit_kmeans, kmeans_jsd
from proseflow.physics.structures import build_peptide
from proseflow.report import viewer


@pytest.fixture(scope="module")
def dipeptide():
    topology, x0 = build_peptide("WA", minimize=False)
    return mdtraj.Topology.from_openmm(topology), x0


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_kabsch_recovers_a_rigid_motion():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    r, t = random_rotation(rng), rng.normal(size=3)
    y = x @ r.T + t
    r_fit, t_fit = conformations.kabsch(x, y)
    np.testing.assert_allclose(r_fit, r, atol=1e-10)
    np.testing.assert_allclose(t_fit, t, atol=1e-10)
    moved, rmsd = conformations.superpose(x, y)
    np.testing.assert_allclose(moved, y, atol=1e-10)
    assert rmsd < 1e-10


def test_kabsch_never_reflects():
    """The mirror image of a chiral point set is not superposable: the fit stays a proper rotation."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3))
    r, _ = conformations.kabsch(x, x * [1, 1, -1])
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert conformations.superpose(x, x * [1, 1, -1])[1] > 0.1


def test_superposition_matches_mdtraj_on_heavy_atoms(dipeptide):
    """RMSD and superposed coordinates against mdtraj (QCP: an independent algorithm), fitted on heavy atoms."""
    top, x0 = dipeptide
    rng = np.random.default_rng(2)
    other = (x0 + rng.normal(scale=0.03, size=x0.shape)) @ random_rotation(rng).T + 0.7
    heavy = conformations.heavy_atoms(top)
    assert 0 < len(heavy) < top.n_atoms and all(top.atom(i).element.symbol != "H" for i in heavy)
    moved, rmsd = conformations.superpose(other, x0, heavy)
    ref = mdtraj.Trajectory(x0[None].astype(np.float64), top)
    traj = mdtraj.Trajectory(other[None].astype(np.float64), top)
    assert rmsd == pytest.approx(float(mdtraj.rmsd(traj, ref, atom_indices=heavy, precentered=False)[0]), abs=2e-6)
    expected = traj.superpose(ref, atom_indices=heavy).xyz[0]
    np.testing.assert_allclose(moved, expected, atol=2e-5)


def test_pdb_text_round_trip(dipeptide, tmp_path):
    top, x0 = dipeptide
    text = conformations.pdb_text(top, x0, remarks=("state 1: MD #12",))
    assert text.startswith("REMARK   1 state 1: MD #12\n") and text.endswith("TER\n")
    assert all(len(line) <= 80 for line in text.splitlines())
    path = tmp_path / "wa.pdb"
    path.write_text(text + "END\n")
    back = mdtraj.load_pdb(str(path), standard_names=False)
    np.testing.assert_allclose(back.xyz[0], x0, atol=6e-5)  # 0.001 Angstrom in the file
    assert [a.name for a in back.topology.atoms] == [a.name for a in top.atoms]
    assert [a.element.symbol for a in back.topology.atoms] == [a.element.symbol for a in top.atoms]
    assert [(r.name, r.resSeq) for r in back.topology.residues] == [(r.name, r.resSeq) for r in top.residues]
    from openmm import app

    assert app.PDBFile(str(path)).topology.getNumAtoms() == top.n_atoms


def synthetic_sources(top, x0, n_ref=400, n=300, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    ref_tica = centres[rng.choice(3, n_ref, p=[0.5, 0.3, 0.2])] + rng.normal(scale=0.3, size=(n_ref, 2))
    # the sampler never visits the third state; its weights favour the second
    lab = rng.choice(2, n)
    tica = centres[lab] + rng.normal(scale=0.3, size=(n, 2))
    weights = np.where(lab == 1, 3.0, 1.0)
    md_xyz = x0 + rng.normal(scale=0.02, size=(n_ref, *x0.shape))
    xyz = x0 + rng.normal(scale=0.04, size=(n, *x0.shape))
    candidates = rng.choice(n, 50)
    calls = []

    def md_positions(idx):
        calls.append(list(idx))
        return md_xyz[idx]

    sources = [conformations.Source("MD", ref_tica, positions=md_positions, ids=np.arange(n_ref) * 10, color="#0000ff"),
               conformations.Source("SNIS", tica, weights=weights, candidates=candidates, positions=lambda idx: xyz[idx]),
               conformations.Source("proposals", tica)]
    return sources, dict(md_xyz=md_xyz, xyz=xyz, candidates=candidates, calls=calls, weights=weights)


def test_states_are_the_metrics_clusters_with_populations_and_nearest_members(dipeptide):
    top, x0 = dipeptide
    sources, extra = synthetic_sources(top, x0)
    k, seed = 3, 0
    states = conformations.tica_states(sources, k, seed)
    model = fit_kmeans(sources[0].tica, k, seed)
    md_labels = model.transform(sources[0].tica)
    md_pop = np.bincount(md_labels, minlength=k) / len(md_labels)
    assert [s.cluster for s in states] == list(np.argsort(-md_pop, kind="stable"))
    snis_labels = model.transform(sources[1].tica)
    w = extra["weights"] / extra["weights"].sum()
    for st in states:
        assert st.populations["MD"] == pytest.approx(md_pop[st.cluster])
        assert st.populations["SNIS"] == pytest.approx(w[snis_labels == st.cluster].sum())
        assert st.populations["proposals"] == pytest.approx(np.mean(snis_labels == st.cluster))
        members = np.flatnonzero(md_labels == st.cluster)
        d = np.sum((sources[0].tica[members] - st.centre) ** 2, axis=1)
        assert st.representatives["MD"] == members[np.argmin(d)]
        cand = np.unique(extra["candidates"])
        cand = cand[snis_labels[cand] == st.cluster]
        if len(cand):
            d = np.sum((sources[1].tica[cand] - st.centre) ** 2, axis=1)
            assert st.representatives["SNIS"] == cand[np.argmin(d)]
        else:
            assert st.representatives["SNIS"] is None
        assert "proposals" not in st.representatives
    assert any(st.representatives["SNIS"] is None for st in states)  # the state the sampler never visits
    # the same clustering as the TICA-JSD metric: its JSD from these histograms
    from proseflow.evaluation.metrics import jensen_shannon

    h_md = np.bincount(md_labels, minlength=k)
    h_s = np.bincount(snis_labels, minlength=k)
    assert kmeans_jsd(sources[0].tica, sources[1].tica, k=k, seed=seed) == pytest.approx(jensen_shannon(h_md, h_s))


def test_state_viewer_superposes_and_summarises(dipeptide):
    top, x0 = dipeptide
    sources, extra = synthetic_sources(top, x0)
    states = conformations.tica_states(sources, 3, 0)
    data, summary = conformations.state_viewer(top, sources, states)
    assert len(extra["calls"]) == 1  # the MD frames are read once
    assert len(data["scenes"]) == len(states) == len(summary) == len(data["rows"])
    heavy = conformations.heavy_atoms(top)
    anchor = None
    for scene, st, row in zip(data["scenes"], summary, data["rows"], strict=True):
        names = [m["name"] for m in scene["models"]]
        assert names[0] == "MD" and names == ["MD"] + (["SNIS"] if st["representative"]["SNIS"] is not None else [])
        assert len(row) == len(data["columns"])
        xyz = {}
        for m in scene["models"]:
            lines = [ln for ln in m["pdb"].splitlines() if ln.startswith("ATOM")]
            xyz[m["name"]] = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in lines]) / 10
        md_frame = st["representative"]["MD"] // 10  # ids are frame numbers x 10
        if anchor is None:
            anchor = xyz["MD"]
        # every MD representative is superposed on the first one: same heavy-atom RMSD as the optimal fit
        _, best = conformations.superpose(extra["md_xyz"][md_frame], anchor, heavy)
        got = np.sqrt(np.mean(np.sum((xyz["MD"][heavy] - anchor[heavy]) ** 2, axis=1)))
        assert got == pytest.approx(best, abs=2e-4)
        if "SNIS" in xyz:
            got = np.sqrt(np.mean(np.sum((xyz["SNIS"][heavy] - xyz["MD"][heavy]) ** 2, axis=1)))
            assert got == pytest.approx(st["rmsd_nm"]["SNIS"], abs=2e-4)
            assert f"RMSD SNIS to MD: {st['rmsd_nm']['SNIS']:.3f} nm" in scene["info"]
        else:
            assert "SNIS: no sample in this state" in scene["info"]
    json.dumps(summary, allow_nan=False)
    merged = conformations.merge_viewer_data({"WA": data, "AA": data})
    assert len(merged["scenes"]) == 2 * len(data["scenes"]) and merged["scenes"][0]["label"].startswith("WA: ")
    assert merged["columns"][0] == "system" and merged["rows"][-1][0] == "AA"


def test_states_report_the_median_energy_of_md_and_proposals(dipeptide):
    """Per state: the median energy of MD's frames and of the proposals in it (the clusters' own members, recounted
    here from the k-means labels), in the summary, the table and the scene text; a state without proposals
    says so (None, "–"); sources without energies get no column."""
    from dataclasses import replace

    top, x0 = dipeptide
    sources, _ = synthetic_sources(top, x0)
    rng = np.random.default_rng(1)
    e_md = rng.normal(-170.0, 5.0, len(sources[0].tica))
    e_prop = rng.normal(-120.0, 30.0, len(sources[2].tica))
    e_prop[::7] = np.inf  # a failed energy is not a member's energy
    sources = [replace(sources[0], energy_kT=e_md), sources[1], replace(sources[2], energy_kT=e_prop)]
    states = conformations.tica_states(sources, 3, 0)
    model = fit_kmeans(sources[0].tica, 3, 0)
    md_labels, prop_labels = model.transform(sources[0].tica), model.transform(sources[2].tica)
    for st in states:
        assert st.median_energy_kT["MD"] == pytest.approx(np.median(e_md[md_labels == st.cluster]))
        mine = e_prop[(prop_labels == st.cluster) & np.isfinite(e_prop)]
        assert st.median_energy_kT["proposals"] == (pytest.approx(np.median(mine)) if len(mine) else None)
        assert "SNIS" not in st.median_energy_kT
    assert any(st.median_energy_kT["proposals"] is None for st in states)  # the state no proposal reaches
    data, summary = conformations.state_viewer(top, sources, states)
    assert data["columns"][-2:] == ["MD median E (kT)", "proposals median E (kT)"]
    for st, row, scene, sm in zip(states, data["rows"], data["scenes"], summary, strict=True):
        assert row[-2] == f"{st.median_energy_kT['MD']:.1f}" and sm["median_energy_kT"] == st.median_energy_kT
        e = st.median_energy_kT["proposals"]
        assert row[-1] == ("–" if e is None else f"{e:.1f}")
        assert f"MD median energy {st.median_energy_kT['MD']:.1f} kT" in scene["info"]
    json.dumps(summary, allow_nan=False)


def fake_tarball(path, js="window.$3Dmol = {};"):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in ((viewer.MEMBER_JS, js), (viewer.MEMBER_LICENSE, "BSD-3-Clause, the 3Dmol authors")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_library_lookup_and_fallback(tmp_path):
    pinned = viewer.pin()
    assert pinned["THREEDMOL_VERSION"] and len(pinned["THREEDMOL_SHA256"]) == 64
    missing = viewer.find_library(environ={}, locations=[tmp_path / "nothing.tgz"])
    assert not missing.available and "make install" in missing.reason and "npm" in missing.reason
    # a tarball that is not the pinned one is refused
    wrong = fake_tarball(tmp_path / f"3dmol-{pinned['THREEDMOL_VERSION']}.tgz")
    lib = viewer.find_library(environ={}, locations=[wrong])
    assert not lib.available and "sha256" in lib.reason
    # the override is used as given: a tarball or a .js file
    lib = viewer.find_library(environ={viewer.ENV_VAR: str(wrong)})
    assert lib.available and lib.js == "window.$3Dmol = {};" and "BSD" in lib.license
    js = tmp_path / "3Dmol-min.js"
    js.write_text("var x = '</script>';")
    lib = viewer.find_library(environ={viewer.ENV_VAR: str(js)})
    assert lib.available and "<\\/script>" in viewer.library_script(lib)
    assert viewer.library_script(lib).count("</script>") == 1
    lib = viewer.find_library(environ={viewer.ENV_VAR: str(tmp_path / "absent.js")})
    assert not lib.available and viewer.ENV_VAR in lib.reason


def test_section_without_the_library_keeps_table_and_says_why(dipeptide):
    top, x0 = dipeptide
    sources, _ = synthetic_sources(top, x0)
    data, _ = conformations.state_viewer(top, sources, conformations.tica_states(sources, 3, 0))
    absent = viewer.Library(None, "2.5.5", "", "3Dmol.js 2.5.5 was not found (here)")
    text = viewer.viewer_section(data, heading="3D", caption="c", library=absent)
    assert "3D view not shown: 3Dmol.js 2.5.5 was not found (here)." in text
    assert 'class="pf-3d"' not in text and "embedded by proseflow" not in text
    assert text.count("<tr>") == len(data["rows"]) + 1 and text.count("<option") == len(data["scenes"])
    payload = text.split('<script type="application/json" class="pf-data">')[1].split("</script>")[0]
    assert json.loads(payload)["scenes"] == data["scenes"]
    present = viewer.Library("window.$3Dmol = {};", "2.5.5", "npm 3dmol@2.5.5")
    text = viewer.viewer_section(data, heading="3D", caption="c", library=present)
    assert 'class="pf-3d"' in text and "window.$3Dmol = {};" in text and '<p class="pf-missing"></p>' in text
    assert "window.$3Dmol = {};" not in viewer.viewer_section(data, heading="3D", caption="c", library=present,
                                                         include_library=False)


@pytest.mark.skipif(not viewer.find_library().available, reason="3Dmol.js not installed (make install, with npm)")
def test_installed_library_is_the_pinned_one():
    lib = viewer.find_library()
    assert lib.version == viewer.pin()["THREEDMOL_VERSION"] and viewer.pin()["THREEDMOL_SHA256"] in lib.origin
    assert "$3Dmol" in lib.js and "BSD" in lib.license and "</script" not in viewer.library_script(lib)[8:-9]
