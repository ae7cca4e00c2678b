"""BM25 inside Postgres: scores against a reference implementation, the per-company term
statistics after every kind of write (and a killed one), the tenant wall around them."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.settings import get_settings
from tests.conftest import bm25_settings

REPO = Path(__file__).resolve().parent.parent

HAND_CORPUS = [
    ("frames.txt", "Frames are adjusted free of charge. Bring your frames to any branch.", None),
    ("progressive.txt", "Progressive lenses start at £189 per pair; premium progressive lenses cost £320.", None),
    ("single.txt", "Single vision lenses cost £49 per pair.", None),
    ("coatings.txt", "Anti-reflective coating costs £35 and reduces glare from screens and headlights at night.", None),
    ("contacts.txt", "Contact lenses must never be rinsed in tap water. Tap water carries acanthamoeba.", None),
    ("children.txt", "Children's eye examinations are free. Children's frames are free with a voucher.", None),
]


def _lexemes(connection: sa.Connection, text: str) -> list[str]:
    """The tokens Postgres indexes for `text` (english configuration), each repeated tf times."""
    rows = connection.execute(sa.text(
        "SELECT u.lexeme, cardinality(u.positions) AS tf FROM unnest(to_tsvector('english', CAST(:t AS text))) u"),
        {"t": text}).all()
    return [row.lexeme for row in rows for _ in range(row.tf)]


def _stats(company_id: str) -> tuple[tuple[int, int], dict[str, int]]:
    """(chunks, total length) and df per lexeme as the triggers keep them."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:
        corpus = connection.execute(sa.text(
            "SELECT chunks, total_length FROM bm25_corpus WHERE company_id = :c"), {"c": company_id}).first()
        terms = dict(connection.execute(sa.text(
            "SELECT lexeme, df FROM bm25_terms WHERE company_id = :c"), {"c": company_id}).all())
    return ((int(corpus.chunks), int(corpus.total_length)) if corpus else (0, 0)), terms


def _recomputed(company_id: str) -> tuple[tuple[int, int], dict[str, int]]:
    """The same statistics computed from scratch, in Python, from the active chunks' text and
    search context (what the text-search columns index)."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT text, metadata_->>'search_context' AS context FROM data_chunks "
            "WHERE company_id = :c AND is_active IS TRUE"), {"c": company_id}).all()
        tokens = [_lexemes(connection, f"{row.text} {row.context or ''}") for row in rows]
    df: dict[str, int] = {}
    for chunk in tokens:
        for lexeme in set(chunk):
            df[lexeme] = df.get(lexeme, 0) + 1
    return (len(tokens), sum(len(chunk) for chunk in tokens)), df


Terms = dict[int, tuple[str, int]]


def _chunk_terms(company_id: str) -> tuple[Terms, Terms]:
    """BM25's narrow copy of the active chunks (id -> tsvector with the context counted twice,
    length) as the triggers keep it, and the same computed from the active chunks themselves."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:
        kept = connection.execute(sa.text(
            "SELECT id, tsv::text AS tsv, length FROM bm25_chunk_terms WHERE company_id = :c"), {"c": company_id})
        active = connection.execute(sa.text(
            "SELECT id, (text_search_tsv || to_tsvector('english', coalesce(metadata_->>'search_context', '')))::text "
            "AS tsv, text_search_length AS length FROM data_chunks WHERE company_id = :c AND is_active IS TRUE"),
            {"c": company_id})
        return ({row.id: (row.tsv, row.length) for row in kept}, {row.id: (row.tsv, row.length) for row in active})


def _assert_in_step(company_id: str) -> None:
    assert _stats(company_id) == _recomputed(company_id)
    kept, active = _chunk_terms(company_id)
    assert kept == active


# -- scores -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k1", "b"), [(0.9, 0.4), (1.2, 0.75), (2.0, 0.0)])
def test_scores_match_reference_implementation(company, index_texts, k1: float, b: float) -> None:
    import bm25s
    import numpy as np

    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search

    ids = index_texts(company, HAND_CORPUS)
    query = "How much do progressive lenses and anti-reflective coatings cost per pair?"
    with tenant(company.id):
        hits = bm25_search(company.id, query, 50, k1=k1, b=b)
        with get_engine().connect() as connection:
            corpus_tokens = [_lexemes(connection, text) for _, text, _ in HAND_CORPUS]
            query_tokens = sorted(set(_lexemes(connection, query)))

    reference = bm25s.BM25(method="lucene", k1=k1, b=b, dtype="float64")
    reference.index(corpus_tokens, show_progress=False)
    expected = np.asarray(reference.get_scores(query_tokens), dtype=float)

    got = {hit.node.node_id: hit.bm25 for hit in hits}
    matching = {ids[i]: float(expected[i]) for i in range(len(ids)) if expected[i] > 0}
    assert set(got) == set(matching)  # exactly the chunks sharing a lexeme with the query
    for node_id, score in matching.items():
        assert got[node_id] == pytest.approx(score, abs=1e-6)
    assert [hit.bm25 for hit in hits] == sorted((hit.bm25 for hit in hits), reverse=True)

    # One term by hand, so the reference itself is checked: "single" occurs once in 1 of 6 chunks.
    assert corpus_tokens[2].count("singl") == 1 and all("singl" not in t for i, t in enumerate(corpus_tokens) if i != 2)
    lengths = [len(tokens) for tokens in corpus_tokens]
    by_hand = math.log(1 + (6 - 1 + 0.5) / (1 + 0.5)) * 1 / (1 + k1 * (1 - b + b * lengths[2] / (sum(lengths) / 6)))
    with tenant(company.id):
        (hit,) = bm25_search(company.id, "single", 5, k1=k1, b=b)
    assert hit.node.node_id == ids[2]
    assert hit.bm25 == pytest.approx(by_hand, abs=1e-9)


def test_ties_are_broken_by_chunk_id_and_unknown_words_match_nothing(company, index_texts) -> None:
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search

    same = "Tinted lenses for driving at dusk."
    index_texts(company, [(f"copy-{n}.txt", same, None) for n in range(5)] + HAND_CORPUS[:2])
    with tenant(company.id):
        first = bm25_search(company.id, "tinted driving", 10, **bm25_settings())
        again = bm25_search(company.id, "tinted driving", 10, **bm25_settings())
        assert bm25_search(company.id, "zyxwv qqqq", 10, **bm25_settings()) == []
        assert bm25_search(company.id, "the and of", 10, **bm25_settings()) == []  # stop words only
    assert len(first) == 5 and len({hit.bm25 for hit in first}) == 1
    assert [h.node.node_id for h in first] == [h.node.node_id for h in again]
    with tenant(company.id):
        from core.db.engines import get_engine

        with get_engine().connect() as connection:
            order = connection.execute(sa.text(
                "SELECT node_id FROM data_chunks WHERE company_id = :c AND node_id = ANY(:ids) ORDER BY id"),
                {"c": company.id, "ids": [h.node.node_id for h in first]}).scalars().all()
    assert [h.node.node_id for h in first] == order


def test_pruned_top_k_equals_scoring_every_match(company, index_texts) -> None:
    """The MaxScore shortcut (score the rare words' chunks first, stop once the common words
    cannot catch up) returns exactly what scoring every matching chunk returns."""
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search

    common = "Lenses and frames for every patient; lenses checked at collection."
    texts = [(f"c{n}.txt", f"{common} Note {n}: " + " ".join(["lens"] * (n % 4)), None) for n in range(40)]
    texts += [("swim.txt", "Never swim in contact lenses: remove your lenses before swimming.", None),
              ("goggles.txt", "Prescription swimming goggles are available to order.", None)]
    index_texts(company, texts)
    with tenant(company.id):
        # the last query's "goggels" is read as "goggl" (retrieval.spelling) before the match
        for query in ("can I swim in my contact lenses?", "lenses frames patient", "goggles lens note 7",
                      "goggels lens note 7"):
            for k in (1, 3, 10):
                pruned = bm25_search(company.id, query, k, posting_budget=1, **bm25_settings())
                full = bm25_search(company.id, query, k, posting_budget=10**9, **bm25_settings())
                assert [(h.node.node_id, round(h.bm25, 9)) for h in pruned] == \
                    [(h.node.node_id, round(h.bm25, 9)) for h in full], (query, k)
        misspelled = bm25_search(company.id, "goggels lens note 7", 10, **bm25_settings())
        right = bm25_search(company.id, "goggles lens note 7", 10, **bm25_settings())
    assert [h.node.node_id for h in misspelled] == [h.node.node_id for h in right]


def test_query_text_is_a_bound_parameter(company, index_texts, statements) -> None:
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search

    index_texts(company, HAND_CORPUS)
    hostile = "lenses' | 'frames'); DROP TABLE bm25_terms; --"
    with tenant(company.id):
        bm25_search(company.id, hostile, 5, **bm25_settings())
    bm25 = [s for s in statements if "bm25_terms" in s]
    assert bm25 and all("DROP TABLE" not in s.split(" {", 1)[0] for s in bm25)
    assert all(company.id not in s.split(" {", 1)[0] for s in bm25)


def test_a_word_in_the_title_or_headings_counts_twice(company, index_texts) -> None:
    """BM25 over text and context, a context occurrence counted twice in tf (the length stays the
    plain token count): checked term by term against the formula."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search, idf

    items = [("care.md", "Rinse lenses in fresh solution every day.", "Contact lens care > Cleaning"),
             ("fees.md", "Contact lens check-ups cost £25.", "Fees"),
             ("frames.md", "Frames are adjusted free of charge.", "Frames > Adjustments")]
    ids = index_texts(company, [(filename, text, None) for filename, text, _ in items],
                      contexts=[context for _, _, context in items])
    k1, b = 0.9, 0.4
    with tenant(company.id):
        hits = {hit.node.node_id: hit.bm25 for hit in bm25_search(
            company.id, "contact lens cleaning", 10, k1=k1, b=b)}
        with get_engine().connect() as connection:
            texts = [_lexemes(connection, text) for _, text, _ in items]
            contexts = [_lexemes(connection, context) for _, _, context in items]
            query = sorted(set(_lexemes(connection, "contact lens cleaning")))
    lengths = [len(t) + len(c) for t, c in zip(texts, contexts, strict=True)]
    average = sum(lengths) / len(lengths)
    expected: dict[str, float] = {}
    for i, node_id in enumerate(ids):
        score = 0.0
        for lexeme in query:
            df = sum(lexeme in t or lexeme in c for t, c in zip(texts, contexts, strict=True))
            tf = texts[i].count(lexeme) + 2 * contexts[i].count(lexeme)
            if tf:
                score += idf(len(items), df) * tf / (tf + k1 * (1 - b + b * lengths[i] / average))
        if score:
            expected[node_id] = score
    assert set(hits) == set(expected) == {ids[0], ids[1]}
    for node_id, score in expected.items():
        assert hits[node_id] == pytest.approx(score, abs=1e-9)
    assert contexts[0].count("clean") == 1 and "clean" not in texts[0]  # only in the care chunk's heading


def test_a_misspelled_word_reads_as_the_companys_nearest_word(make_company, index_texts) -> None:
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search

    a, b = make_company(), make_company()
    ids = index_texts(a, HAND_CORPUS)
    index_texts(b, [("b.txt", "Myopia control for children: atropine drops and special lenses.", None)])
    options = {**bm25_settings(), "fuzzy": True}
    with tenant(a.id):
        misspelled = bm25_search(a.id, "progresive", 5, **options)
        right = bm25_search(a.id, "progressive", 5, **options)
        strict = bm25_search(a.id, "progresive", 5, **{**options, "fuzzy": False})
        # "miopia" is one edit from B's "myopia" but A has no such word: B's vocabulary is not A's
        other = bm25_search(a.id, "miopia", 5, **options)
        short = bm25_search(a.id, "tep", 5, **options)  # three letters: no edits (not "tap")
    assert [h.node.node_id for h in misspelled] == [h.node.node_id for h in right] == [ids[1]]
    assert misspelled[0].bm25 == pytest.approx(right[0].bm25)
    assert strict == [] and other == [] and short == []
    with tenant(b.id):
        assert len(bm25_search(b.id, "miopia", 5, **options)) == 1


def test_text_mode_ranks_by_bm25_with_cosine_scores(company, index_texts) -> None:
    from retrieval.retriever import TenantRetriever

    ids = index_texts(company, HAND_CORPUS)
    ranked = TenantRetriever(company.id, mode="text", top_k=3, threshold=-1.0, order="rank",
                             settings=get_settings()).retrieve(
        "progressive lenses price")
    assert ranked[0].node.node_id == ids[1]
    assert all(-1.0 <= (n.score or 0.0) <= 1.0 for n in ranked)  # cosine, the threshold's scale


# -- statistics in step with every write --------------------------------------------------------


def test_statistics_follow_ingest_replace_deactivate_delete(company) -> None:
    from indexing.documents import delete_document, index_text, patch_document

    first = index_text(company.id, "care.md", "# Care\n\nRinse lenses in fresh solution. Never use tap water.",
                       settings=get_settings())
    second = index_text(company.id, "prices.md", "# Prices\n\nProgressive lenses start at £189 per pair.",
                        settings=get_settings())
    _assert_in_step(company.id)
    assert _stats(company.id)[0][0] == 2

    index_text(company.id, "care.md", "# Care\n\nStore lenses in a clean case. Replace the case monthly.",
               settings=get_settings())  # replace
    _assert_in_step(company.id)
    assert "tap" not in _stats(company.id)[1]

    patch_document(company.id, second.id, is_active=False)
    _assert_in_step(company.id)
    assert "progress" not in _stats(company.id)[1]
    patch_document(company.id, second.id, category="pricing")  # a metadata change that counts for nothing
    _assert_in_step(company.id)
    patch_document(company.id, second.id, is_active=True)
    _assert_in_step(company.id)
    assert _stats(company.id)[1]["progress"] == 1

    delete_document(company.id, first.id)
    _assert_in_step(company.id)
    delete_document(company.id, second.id)
    assert _stats(company.id) == ((0, 0), {})


def test_statistics_in_step_under_concurrent_ingestion(company) -> None:
    from indexing.documents import index_text

    errors: list[BaseException] = []

    def ingest(n: int) -> None:
        try:
            for round_ in range(3):
                index_text(company.id, f"doc-{n}.md",
                           f"# Doc {n}\n\nLenses and frames, round {round_}, writer {n}. Shared words: lens coating.",
                           settings=get_settings())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    _assert_in_step(company.id)
    assert _stats(company.id)[0][0] == 4


_HOLD_OPEN = """
import sys, time, json, uuid
import sqlalchemy as sa
from core.db.engines import get_engine
from core.db.tenant_scope import tenant
company = sys.argv[1]
with tenant(company), get_engine().connect() as connection:
    for n in range(3):
        connection.execute(sa.text(
            "INSERT INTO data_chunks (text, metadata_, node_id) VALUES (:t, CAST(:m AS jsonb), :n)"),
            {"t": f"Killed ingest chunk {n}: orthokeratology lenses reshape the cornea overnight.",
             "m": json.dumps({"company_id": company, "is_active": True}), "n": str(uuid.uuid4())})
    print("inserted", flush=True)
    time.sleep(120)
"""


def test_statistics_survive_a_killed_ingest(company, index_texts) -> None:
    index_texts(company, HAND_CORPUS)
    before = _stats(company.id)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_OPEN, company.id], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "inserted", proc.stderr.read() if proc.stderr else ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-transaction: chunks and statistics written, nothing committed
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _backend_alive(company.id):
        time.sleep(0.1)
    assert _stats(company.id) == before
    _assert_in_step(company.id)
    assert "orthokeratolog" not in _stats(company.id)[1]


def _backend_alive(company_id: str) -> bool:
    """Whether the killed client's server process still holds its transaction (until Postgres notices)."""
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        return bool(connection.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%orthokeratology%' AND pid <> pg_backend_pid()"
        )).scalar())


def test_statistics_after_killed_folder_ingest_and_rerun(make_company, samples_dir, tmp_path) -> None:
    """The real ingestion command, killed between (or inside) its pipeline runs, then rerun."""
    import shutil

    from indexing.folder import ingest_folder

    folder = tmp_path / "kb"
    folder.mkdir()
    for name in sorted(os.listdir(samples_dir / "brightsight-optical"))[:6]:
        shutil.copy(samples_dir / "brightsight-optical" / name, folder)
    company = make_company()
    env = {**os.environ, "INGEST_BATCH_CHARS": "3000"}
    proc = subprocess.Popen([sys.executable, "-m", "app", "ingest", str(folder), "--company", company.slug],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and _stats(company.id)[0][0] < 10:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read().decode()[-2000:])
    time.sleep(0.5)
    _assert_in_step(company.id)
    ingest_folder(folder, company.id, settings=get_settings())
    _assert_in_step(company.id)


# -- the tenant wall ---------------------------------------------------------------------------


def test_statistics_are_per_company_and_behind_row_level_security(make_company, index_texts) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_search

    a, b = make_company(), make_company()
    index_texts(a, HAND_CORPUS)
    with tenant(a.id):
        before = {h.node.node_id: h.bm25
                  for h in bm25_search(a.id, "progressive lenses cost", 10, **bm25_settings())}
    stats_a = _stats(a.id)
    index_texts(b, [(f"b-{n}.txt", "Progressive lenses cost more at B. Lenses, lenses, lenses.", None)
                    for n in range(20)])
    assert _stats(a.id) == stats_a  # B's chunks never count in A's statistics
    assert _stats(b.id)[0][0] == 20
    with tenant(a.id):
        after = {h.node.node_id: h.bm25
                 for h in bm25_search(a.id, "progressive lenses cost", 10, **bm25_settings())}
        # A's scope sees none of B's statistics, even when it asks for them by id
        with get_engine().connect() as connection:
            seen = connection.execute(sa.text(
                "SELECT count(*) FROM bm25_terms WHERE company_id = :b"), {"b": b.id}).scalar()
            corpus = connection.execute(sa.text("SELECT count(*) FROM bm25_corpus")).scalar()
            with pytest.raises(sa.exc.DBAPIError):
                connection.execute(sa.text("INSERT INTO bm25_corpus VALUES (:b, 1, 1)"), {"b": b.id})
    assert after == before
    assert seen == 0 and corpus == 1
    with tenant(a.id):
        # B's chunks are invisible from A's scope
        assert bm25_search(b.id, "progressive lenses cost", 10, **bm25_settings()) == []


def test_no_tenant_scope_sees_no_statistics(company, index_texts) -> None:
    from core.db.engines import get_engine

    index_texts(company, HAND_CORPUS)
    with get_engine().connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM bm25_terms")).scalar() == 0
        assert connection.execute(sa.text("SELECT count(*) FROM bm25_corpus")).scalar() == 0


def test_bm25_postings_return_only_the_verified_tenants_chunks(make_company, index_texts) -> None:
    """The GIN lookup runs with the owner's rights (row-level security would keep the index from
    evaluating `@@`), so it must filter on the verified tenant itself."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    a, b = make_company(), make_company()
    index_texts(a, HAND_CORPUS)
    index_texts(b, [(f"b-{n}.txt", "Progressive lenses and frames, lenses everywhere.", None) for n in range(5)])
    everything = "'lens' | 'frame' | 'progress' | 'cost'"
    lexemes = ["lens", "frame", "progress", "cost"]
    lookup = sa.text("SELECT id, lexeme, tf, length FROM ils_bm25_postings(CAST(:m AS tsquery), CAST(:l AS text[]))")
    with tenant(a.id), get_engine().connect() as connection:
        found = {(row.id, row.lexeme, row.tf, row.length)
                 for row in connection.execute(lookup, {"m": everything, "l": lexemes})}
        own = {(row.id, row.lexeme, row.tf, row.length) for row in connection.execute(sa.text(
            "SELECT id, u.lexeme, cardinality(u.positions) AS tf, text_search_length AS length "
            "FROM data_chunks, unnest(text_search_tsv) AS u "
            "WHERE company_id = :a AND is_active IS TRUE AND u.lexeme = ANY(CAST(:l AS text[]))"),
            {"a": a.id, "l": lexemes})}
    assert found == own and len({row[0] for row in own}) >= 4
    with get_engine().connect() as connection:  # no tenant scope: nothing
        assert connection.execute(lookup, {"m": everything, "l": lexemes}).all() == []
        acl = connection.execute(sa.text(
            "SELECT array_to_string(proacl, ',') FROM pg_proc WHERE proname = 'ils_bm25_postings'")).scalar()
    grantees = {entry.split("=", 1)[0] for entry in acl.split(",")}
    assert "" not in grantees and "ils_auth" not in grantees and "ils_app" in grantees  # no PUBLIC execute


def test_words_moved_into_the_headings_are_counted_twice_at_once(company, index_texts) -> None:
    """An update that moves words from a chunk's text to its search context may leave the
    combined tsvector as it was ("Lens lens" + "" and "Lens" + "lens" index alike), yet BM25's
    copy counts context words twice, so it must follow."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    (node_id,) = index_texts(company, [("lens.txt", "Lens lens", None)])
    with tenant(company.id), get_engine().begin() as connection:
        before = connection.execute(sa.text("SELECT text_search_tsv::text FROM data_chunks WHERE company_id = :c "
                                            "AND node_id = :n"), {"c": company.id, "n": node_id}).scalar_one()
        connection.execute(sa.text(
            "UPDATE data_chunks SET text = 'Lens', metadata_ = jsonb_set(metadata_, '{search_context}', '\"lens\"') "
            "WHERE company_id = :c AND node_id = :n"), {"c": company.id, "n": node_id})
        after = connection.execute(sa.text("SELECT text_search_tsv::text FROM data_chunks WHERE company_id = :c "
                                           "AND node_id = :n"), {"c": company.id, "n": node_id}).scalar_one()
    assert before == after  # the case: nothing the statistics see has changed
    _assert_in_step(company.id)
    kept, _ = _chunk_terms(company.id)
    assert [tsv for tsv, _ in kept.values()] == ["'len':1,2,3"]  # once in the text, twice in the context


def test_truncate_empties_the_statistics_with_the_chunks(company, index_texts) -> None:
    """Inside a transaction that is rolled back, so the session's other companies keep their rows."""
    from core.db.owner import get_admin_engine

    index_texts(company, HAND_CORPUS)
    with get_admin_engine().connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(sa.text("TRUNCATE data_chunks CASCADE"))
            assert connection.execute(sa.text("SELECT count(*) FROM bm25_terms")).scalar() == 0
            assert connection.execute(sa.text("SELECT count(*) FROM bm25_corpus")).scalar() == 0
            assert connection.execute(sa.text("SELECT count(*) FROM bm25_chunk_terms")).scalar() == 0
        finally:
            transaction.rollback()
    _assert_in_step(company.id)
