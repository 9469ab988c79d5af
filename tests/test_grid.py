from donors.config import config_from_dict
from donors.grid import STUDY_LANGUAGES, Cell, Regime
from donors.jobs import cells, eval_jobs, train_jobs


def test_regimes_of_every_kind():
    source = Cell("number_words", "en")
    assert Regime.of(source, Cell("number_words", "en")) is Regime.MT_ML
    assert Regime.of(source, Cell("number_words", "de")) is Regime.MT_CL
    assert Regime.of(source, Cell("cldr_currency", "en")) is Regime.CT_ML
    assert Regime.of(source, Cell("cldr_currency", "de")) is Regime.CT_CL


def test_regime_counts_match_the_published_grid_shape():
    # 4 tasks x 11 languages: per source 1 MT-ML, 10 MT-CL, 3 CT-ML, 30 CT-CL (docs/protocol.md section 5).
    grid = [Cell(task, language) for task in "abcd" for language in STUDY_LANGUAGES]
    counts = {}
    for s in grid:
        for t in grid:
            counts[Regime.of(s, t)] = counts.get(Regime.of(s, t), 0) + 1
    assert counts == {Regime.MT_ML: 44, Regime.MT_CL: 440, Regime.CT_ML: 132, Regime.CT_CL: 1320}


def test_jobs_are_stable_and_complete():
    config = config_from_dict({"models": ["m"], "tasks": ["a", "b"], "languages": ["en", "de", "fr"], "seeds": [1, 2]})
    assert len(cells(config)) == 6
    jobs = train_jobs(config)
    assert len(jobs) == 12 and len({j.job_id for j in jobs}) == 12
    assert [j.job_id for j in jobs] == [j.job_id for j in train_jobs(config)]
    assert len(eval_jobs(config)) == (1 + 12) * 6
