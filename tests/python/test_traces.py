"""Traces: the Turnout format (JSON Lines and Parquet), the public formats' readers on real-shaped
sample files, bad input with file:line errors, the columns the simulator takes, and the generator
(seeded, multi-turn, diurnal and bursty, long-tailed) with its CLI."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import turnout
from turnout import _core
from turnout.cli import main as cli_main
from turnout.traces import (
    DEFAULT_START_S,
    TraceColumns,
    TraceError,
    TraceRow,
    TraceWriter,
    columns_from_rows,
    detect_format,
    read_trace,
    scenario_resolver,
)
from turnout.workload import WorkloadShape, generate, parse_scenarios

DATA = Path(__file__).resolve().parent / "data"


def concat(chunks: list[TraceColumns]) -> dict[str, object]:
    """All chunks' columns joined (prompts as per-request lists)."""
    rows = [r for c in chunks for r in c.rows()]
    return {
        "at": [r.at for r in rows],
        "input": [r.input_tokens for r in rows],
        "output": [r.output_tokens for r in rows],
        "prompt": [list(r.blocks or r.token_ids or []) for r in rows],
        "scenario": [r.scenario for r in rows],
        "key": [r.key for r in rows],
        "data_class": [r.data_class for r in rows],
        "accepted": [r.accepted for r in rows],
    }


# --- Public formats on real-shaped samples ---------------------------------------------------


def test_formats_are_detected_by_extension_and_header() -> None:
    assert detect_format(DATA / "mooncake_sample.jsonl") == "mooncake"
    assert detect_format(DATA / "azure_conv_sample.csv") == "azure"
    assert detect_format(DATA / "azure_code_2024_sample.csv") == "azure"
    assert detect_format(DATA / "burstgpt_sample.csv") == "burstgpt"
    assert detect_format(DATA / "turnout_sample.jsonl") == "turnout"


def test_mooncake_hash_ids_are_512_token_blocks_at_ms_offsets() -> None:
    reader = read_trace(DATA / "mooncake_sample.jsonl")
    chunks = list(reader.chunks())
    assert len(chunks) == 1
    c = chunks[0]
    assert c.prompt == "blocks"
    assert c.block_tokens == 512
    assert c.arrival_s.tolist()[:4] == [
        DEFAULT_START_S,
        DEFAULT_START_S,
        DEFAULT_START_S + 3.052,
        DEFAULT_START_S + 3.052,
    ]
    assert c.input_tokens.tolist()[0] == 6755
    assert c.output_tokens.tolist()[0] == 500
    first = c.values[c.offsets[0] : c.offsets[1]].tolist()
    assert first == list(range(14))
    # Requests 5 and 6 share 12 leading blocks (a shared prefix), as in the source.
    fifth = c.values[c.offsets[4] : c.offsets[5]].tolist()
    sixth = c.values[c.offsets[5] : c.offsets[6]].tolist()
    assert fifth[:12] == sixth[:12]
    assert fifth[12] != sixth[12]
    assert c.scenario == [None] * 8
    assert reader.stats.requests == 8
    assert reader.stats.skipped == 0


def test_azure_timestamps_are_utc_with_100ns_ticks() -> None:
    c = next(read_trace(DATA / "azure_conv_sample.csv").chunks())
    base = datetime(2023, 11, 16, 18, 15, 46, tzinfo=timezone.utc).timestamp()
    assert c.arrival_s[0] == pytest.approx(base + 0.68059, abs=1e-6)
    assert c.arrival_s[1] == pytest.approx(base + 4.995169, abs=1e-6)
    assert c.input_tokens.tolist()[:2] == [374, 396]
    assert c.output_tokens.tolist()[:2] == [44, 109]
    assert len(c) == 8
    assert (np.diff(c.offsets) == 0).all()  # no prompt: only sizes
    # The 2024 release's CRLF line ends read the same.
    c24 = next(read_trace(DATA / "azure_code_2024_sample.csv").chunks())
    day = datetime(2024, 5, 10, tzinfo=timezone.utc).timestamp()
    assert c24.arrival_s.tolist() == pytest.approx(
        [day + 0.0093152, day + 0.015531, day + 0.103767], abs=1e-6
    )


def test_burstgpt_seconds_from_start_and_failed_requests_counted() -> None:
    reader = read_trace(DATA / "burstgpt_sample.csv", start_s=1000.0)
    c = next(reader.chunks())
    # The failed request (0 response tokens, line 5) is left out and counted.
    assert c.arrival_s.tolist() == [1005.0, 1045.0, 1118.0, 1121.0, 1140.0]
    assert c.input_tokens.tolist() == [472, 1087, 417, 1310, 85]
    assert c.output_tokens.tolist() == [18, 230, 276, 198, 61]
    assert c.lines is not None
    assert c.lines.tolist() == [2, 3, 4, 6, 7]
    assert reader.stats.failed_in_source == 1
    assert reader.stats.requests == 5


def test_gzipped_traces_read_the_same(tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "mooncake.jsonl.gz"
    packed.write_bytes(gzip.compress((DATA / "mooncake_sample.jsonl").read_bytes()))
    assert detect_format(packed) == "mooncake"
    plain = concat(list(read_trace(DATA / "mooncake_sample.jsonl").chunks()))
    assert concat(list(read_trace(packed).chunks())) == plain


def test_burstgpt_session_column_is_the_key(tmp_path: Path) -> None:
    path = tmp_path / "burst3.csv"
    path.write_text(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,"
        "Log Type\n3.5,abc,1.2,ChatGPT,10,20,30,Conversation log\n"
    )
    c = next(read_trace(path).chunks())
    assert c.input_tokens.tolist() == [10]
    assert c.arrival_s.tolist() == [DEFAULT_START_S + 3.5]
    assert c.key == ["abc"]  # the session is the request key


# --- The Turnout format ----------------------------------------------------------------------


def test_turnout_prompts_text_and_messages_hash_through_the_core() -> None:
    reader = read_trace(DATA / "turnout_sample.jsonl")
    chunks = list(reader.chunks())
    rows = [r for c in chunks for r in c.rows()]
    assert len(rows) == 5
    lines = json.loads((DATA / "turnout_sample.jsonl").read_text().splitlines()[1])
    text = turnout.canonical_prompt(lines["messages"])
    assert rows[0].blocks == _core.trace_blocks(text=text)  # what --record writes
    assert rows[0].block_tokens == 16
    assert rows[0].accepted is True
    assert rows[0].key == "user-42"
    raw = json.loads((DATA / "turnout_sample.jsonl").read_text().splitlines()[2])
    assert rows[1].blocks == _core.trace_blocks(text=raw["text"])
    assert rows[1].data_class == "public"
    assert rows[1].accepted is None
    assert rows[2].token_ids is not None
    assert rows[2].token_ids[:3] == [101, 2023, 2003]
    assert rows[2].accepted is False
    assert rows[3].blocks is not None
    assert rows[3].blocks[0] == 11400714819323198485
    assert rows[3].block_tokens == 256
    assert rows[3].scenario is None
    assert rows[4].blocks is None
    assert rows[4].token_ids is None
    # One prompt kind per chunk: text blocks (16), token ids, 256-token blocks.
    assert [(c.prompt, c.block_tokens, len(c)) for c in chunks] == [
        ("blocks", 16, 2),
        ("tokens", 16, 1),
        ("blocks", 256, 2),
    ]
    assert [c.lines.tolist() for c in chunks if c.lines is not None] == [[2, 3], [4], [5, 6]]


def test_chunks_are_bounded_and_columns_match_the_binding(tmp_path: Path) -> None:
    rows = [
        TraceRow(at=100.0 + i, input_tokens=32, output_tokens=4, blocks=[i, i + 1], key=f"k{i}")
        for i in range(10)
    ]
    chunks = list(columns_from_rows(rows, chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    args = chunks[0].add_kwargs()
    assert set(args) == {
        "arrival_s", "scenario", "key", "data_class", "input_tokens", "output_tokens",
        "accepted", "block_offsets", "blocks", "block_tokens",
    }  # fmt: skip
    assert args["arrival_s"].dtype == np.float64
    assert args["input_tokens"].dtype == np.int64
    assert args["accepted"].dtype == np.int8
    assert args["blocks"].dtype == np.uint64
    assert args["block_offsets"].dtype == np.int64
    assert args["block_offsets"].tolist() == [0, 2, 4, 6, 8]
    assert args["accepted"].tolist() == [-1] * 4
    tokens = next(columns_from_rows([TraceRow(at=1.0, input_tokens=3, output_tokens=1,
                                              token_ids=[1, 2, 3])]))  # fmt: skip
    targs = tokens.add_kwargs()
    assert targs["token_ids"].dtype == np.uint32
    assert targs["token_offsets"].tolist() == [0, 3]


@pytest.mark.parametrize("fmt", ["turnout", "parquet"])
def test_write_then_read_round_trips(tmp_path: Path, fmt: str) -> None:
    source = list(generate(300, seed=5, chunk_rows=128))
    path = tmp_path / ("trace.parquet" if fmt == "parquet" else "trace.jsonl")
    with TraceWriter(path, fmt) as w:  # type: ignore[arg-type]
        for c in source:
            w.write_columns(c)
    assert w.requests == 300
    back = list(read_trace(path).chunks())
    assert concat(back) == concat(source)
    assert {c.block_tokens for c in back} == {256}


def test_parquet_mixed_prompt_kinds_take_the_row_path(tmp_path: Path) -> None:
    rows = [
        TraceRow(at=1.0, input_tokens=3, output_tokens=1, token_ids=[1, 2, 3], accepted=True),
        TraceRow(at=2.0, input_tokens=40, output_tokens=1, blocks=[9, 8], block_tokens=32),
        TraceRow(at=3.0, input_tokens=5, output_tokens=2, scenario="agent-assist"),
    ]
    path = tmp_path / "mixed.parquet"
    every = {"token_ids": None, "blocks": None, "block_tokens": None}
    table = pa.Table.from_pylist([{**every, **r.to_json()} for r in rows])
    pq.write_table(table, path)
    back = [r for c in read_trace(path).chunks() for r in c.rows()]
    assert [(r.token_ids, r.blocks, r.block_tokens) for r in back] == [
        ([1, 2, 3], None, None),
        (None, [9, 8], 32),
        (None, None, None),
    ]
    assert back[0].accepted is True
    assert back[2].scenario == "agent-assist"


# --- Bad input --------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = '{"at": 1.0, "input_tokens": 10, "output_tokens": 5}'


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('{"at": 1.0, "input_tokens": 10', "not JSON"),
        ('{"at": 1.0, "output_tokens": 5}', "missing 'input_tokens'"),
        ('{"at": "noon", "input_tokens": 10, "output_tokens": 5}', "'at' must be a number"),
        ('{"at": 1.0, "input_tokens": -1, "output_tokens": 5}', "'input_tokens' out of range"),
        ('{"at": 1.0, "input_tokens": 1.5, "output_tokens": 5}', "must be an integer"),
        ('{"at": 1.0, "input_tokens": 1, "output_tokens": 5, "accepted": "yes"}', "'accepted'"),
        ('{"at": 1.0, "input_tokens": 1, "output_tokens": 5, "prompt": "x"}', "unknown field"),
        (
            '{"at": 1.0, "input_tokens": 1, "output_tokens": 5, "text": "a", "token_ids": [1]}',
            "at most one prompt form",
        ),
        ('{"at": 1.0, "input_tokens": 1, "output_tokens": 5, "token_ids": [-4]}', "token_ids[0]"),
        (
            '{"at": 1.0, "input_tokens": 1, "output_tokens": 5, "blocks": [1], "block_tokens": 0}',
            "'block_tokens' must be a positive integer",
        ),
        ("[1, 2, 3]", "must be a JSON object"),
    ],
)
def test_corrupt_turnout_lines_name_file_and_line(tmp_path: Path, line: str, what: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ['{"turnout_trace": 1}', GOOD, line, GOOD])
    with pytest.raises(TraceError) as e:
        list(read_trace(path, "turnout").chunks())
    assert str(e.value).startswith(f"{path}:3: ")
    assert what in str(e.value)


def test_skip_bad_counts_and_continues(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "{oops", GOOD, '{"at": 2}', "", GOOD])
    reader = read_trace(path, "turnout", skip_bad=True)
    chunks = list(reader.chunks())
    assert sum(len(c) for c in chunks) == 3
    assert reader.stats.skipped == 2
    assert reader.stats.skipped_examples[0].startswith(f"{path}:2: not JSON")
    assert reader.stats.skipped_examples[1].startswith(f"{path}:4: missing")


def test_corrupt_csv_and_mooncake_lines(tmp_path: Path) -> None:
    azure = write_lines(
        tmp_path / "a.csv",
        ["TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:15:46.6805900,374,44",
         "2023-11-16 25:15:46.1,1,1", "2023-11-16 18:15:47.0,12"],
    )  # fmt: skip
    with pytest.raises(TraceError, match=r"a\.csv:3: 'TIMESTAMP' has an impossible time"):
        list(read_trace(azure).chunks())
    reader = read_trace(azure, skip_bad=True)
    assert sum(len(c) for c in reader.chunks()) == 1
    assert reader.stats.skipped == 2
    assert "a.csv:4: expected 3 columns, got 2" in reader.stats.skipped_examples[1]
    burst = write_lines(
        tmp_path / "b.csv",
        ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
         "5,ChatGPT,ten,18,490,Conversation log"],
    )  # fmt: skip
    with pytest.raises(TraceError, match=r"b\.csv:2: 'Request tokens' must be an integer"):
        list(read_trace(burst).chunks())
    moon = write_lines(
        tmp_path / "m.jsonl",
        ['{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}',
         '{"timestamp": 5, "input_length": 5, "output_length": 1}'],
    )  # fmt: skip
    with pytest.raises(TraceError, match=r"m\.jsonl:2: missing 'hash_ids'"):
        list(read_trace(moon).chunks())


def test_a_csv_with_another_header_is_refused(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.csv", ["time,prompt,completion", "1,2,3"])
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        read_trace(path)
    with pytest.raises(TraceError, match=r"x\.csv:1: not a BurstGPT header: missing column"):
        list(read_trace(path, "burstgpt").chunks())


def test_unknown_format_missing_file_and_bad_header(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"unknown trace format 'sharegpt' \(formats: auto, "):
        read_trace(DATA / "mooncake_sample.jsonl", "sharegpt")
    with pytest.raises(TraceError, match="no such trace file"):
        read_trace(tmp_path / "absent.jsonl")
    path = write_lines(tmp_path / "v2.jsonl", ['{"turnout_trace": 2}', GOOD])
    with pytest.raises(TraceError, match=r"v2\.jsonl:1: unsupported trace header"):
        list(read_trace(path).chunks())
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(TraceError, match="not a Parquet file"):
        list(read_trace(bad).chunks())


def test_parquet_bad_rows_are_named_by_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"at": [1.0, 2.0, 3.0], "input_tokens": [1, -7, 3], "output_tokens": [1, 1, 1]}),
        path,
    )
    with pytest.raises(TraceError, match=r"bad\.parquet: row 2: 'input_tokens' out of range"):
        list(read_trace(path).chunks())
    reader = read_trace(path, skip_bad=True)
    assert sum(len(c) for c in reader.chunks()) == 2
    assert reader.stats.skipped == 1


def test_an_empty_trace_reads_as_no_chunk(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "empty.jsonl", ['{"turnout_trace": 1}'])
    assert list(read_trace(path).chunks()) == []


# --- Scenarios --------------------------------------------------------------------------------


def test_scenarios_default_only_and_unknown() -> None:
    def chunk(*names: str | None) -> TraceColumns:
        rows = [TraceRow(at=1.0, input_tokens=1, output_tokens=1, scenario=n) for n in names]
        return next(columns_from_rows(rows))

    c = chunk(None, "b")
    scenario_resolver(["a", "b"], "a")(c, "t.jsonl")
    assert c.scenario == ["a", "b"]
    c = chunk(None)
    scenario_resolver(["only"], None)(c, "t.jsonl")
    assert c.scenario == ["only"]
    with pytest.raises(TraceError, match=r"t\.jsonl:1: the request names no scenario .* \(a, b\)"):
        scenario_resolver(["a", "b"], None)(chunk(None), "t.jsonl")
    with pytest.raises(turnout.UnknownScenarioError, match=r"t\.jsonl:2: unknown scenario 'z'"):
        scenario_resolver(["a", "b"], None)(chunk("a", "z"), "t.jsonl")
    with pytest.raises(turnout.UnknownScenarioError, match="the routing table has a, b"):
        scenario_resolver(["a", "b"], "nope")


# --- The generator ----------------------------------------------------------------------------


def gen_rows(n: int, **kw: object) -> list[TraceRow]:
    return [r for c in generate(n, **kw) for r in c.rows()]  # type: ignore[arg-type]


def test_generator_is_seeded() -> None:
    a = [c.values for c in generate(2000, seed=1)]
    b = [c.values for c in generate(2000, seed=1)]
    c = [c.values for c in generate(2000, seed=2)]
    assert all((x == y).all() for x, y in zip(a, b, strict=False))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


def test_generated_turns_extend_the_previous_turn_and_share_system_prompts() -> None:
    rows = gen_rows(3000, seed=3, rate=50.0)
    assert len(rows) == 3000
    assert all(rows[i].at <= rows[i + 1].at for i in range(len(rows) - 1))
    by_session: dict[str, list[TraceRow]] = {}
    for r in rows:
        assert r.key is not None
        by_session.setdefault(r.key, []).append(r)
    multi = [turns for turns in by_session.values() if len(turns) > 1]
    assert len(multi) > 100
    for turns in multi:
        for prev, nxt in itertools.pairwise(turns):
            assert prev.blocks is not None
            assert nxt.blocks is not None
            assert nxt.input_tokens > prev.input_tokens
            assert list(nxt.blocks[: len(prev.blocks) - 1]) == list(prev.blocks[:-1])
    # Sessions of one scenario share system prompts: many sessions, few distinct first blocks.
    firsts = {turns[0].blocks[0] for turns in by_session.values() if turns[0].blocks}
    assert len(firsts) <= 3 * 8 < len(by_session)
    assert {r.scenario for r in rows} == {"agent-assist", "support-summarization",
                                          "contract-extraction"}  # fmt: skip
    assert {r.data_class for r in rows} == {"public", "deidentified", "restricted"}


def test_generated_lengths_are_long_tailed_and_arrivals_diurnal_and_bursty() -> None:
    chunks = list(generate(60_000, seed=4, rate=0.5))  # ~33 hours
    out = np.concatenate([c.output_tokens for c in chunks])
    assert np.percentile(out, 99) > 6 * np.percentile(out, 50)
    at = np.concatenate([c.arrival_s for c in chunks])
    span = at[-1] - at[0]
    assert 0.6 < 60_000 / span / 0.5 < 1.6  # mean rate close to the one asked for
    hours = ((at % 86_400) // 3600).astype(int)
    per_hour = np.bincount(hours, minlength=24)
    assert per_hour[13:17].mean() > 2 * per_hour[1:5].mean()  # afternoon peak, quiet night
    minutes = np.bincount(((at - at[0]) // 60).astype(int))
    # Poisson counts have variance = mean; bursts (and sessions) make them overdispersed.
    assert minutes.var() > 3 * minutes.mean()


def test_generator_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not both"):
        list(generate(10, rate=1.0, duration_s=5.0))
    with pytest.raises(ValueError, match="rate must be > 0"):
        list(generate(10, rate=0.0))
    with pytest.raises(ValueError, match="has no name"):
        parse_scenarios([":public"])
    assert parse_scenarios(["a:public,b", "c"]) == [("a", "public"), ("b", None), ("c", None)]


def test_generator_speed_is_reported() -> None:
    n = 200_000
    started = time.perf_counter()
    total = sum(len(c) for c in generate(n, seed=0, shape=WorkloadShape()))
    elapsed = time.perf_counter() - started
    assert total == n
    print(f"generator: {n / elapsed:,.0f} requests/s")


# --- The generate command ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gen.jsonl", "gen.parquet"])
def test_generate_command_writes_a_readable_trace(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = CliRunner().invoke(
        cli_main,
        ["generate", "--requests", "500", "--seed", "9", "--duration", "600",
         "--scenarios", "faq:public,triage:internal", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 500 requests" in result.output
    assert "requests/s" in result.output
    reader = read_trace(out)
    rows = list(reader.rows())
    assert len(rows) == 500
    assert {r.scenario for r in rows} == {"faq", "triage"}
    assert rows[-1].at - rows[0].at < 3 * 600
    if name.endswith(".jsonl"):
        assert out.read_text().splitlines()[0] == '{"turnout_trace": 1}'


def test_generate_command_refuses_rate_with_duration(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_main, ["generate", "--rate", "5", "--duration", "60", str(tmp_path / "g.jsonl")]
    )
    assert result.exit_code == 2
    assert "give --rate or --duration, not both" in result.output
    result = CliRunner().invoke(
        cli_main, ["generate", "--scenarios", ":x", str(tmp_path / "g.jsonl")]
    )
    assert result.exit_code == 2
    assert "has no name" in result.output


def test_requests_without_an_answer_are_left_out_and_counted(tmp_path: Path) -> None:
    # A sidecar's --record writes decisions that never got an ok outcome with 0 output tokens:
    # nothing to replay, so they are left out and counted, in JSON Lines and Parquet alike.
    unanswered = '{"at": 1.5, "input_tokens": 10, "output_tokens": 0}'
    path = write_lines(tmp_path / "t.jsonl", [GOOD, unanswered, GOOD])
    reader = read_trace(path)
    assert sum(len(list(c.rows())) for c in reader.chunks()) == 2
    assert reader.stats.failed_in_source == 1
    table = pa.table(
        {"at": [1.0, 1.5, 2.0], "input_tokens": [10, 10, 10], "output_tokens": [5, 0, 5]}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    reader = read_trace(tmp_path / "t.parquet")
    assert sum(len(list(c.rows())) for c in reader.chunks()) == 2
    assert reader.stats.failed_in_source == 1
