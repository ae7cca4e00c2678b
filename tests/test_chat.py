"""`POST /api/chat`: extractive and OpenAI-compatible answers, streaming, conversations,
nothing-relevant, and LLM failures (against the loopback fake OpenAI server)."""

from __future__ import annotations

import json
import re
import time

import pytest

BRIGHT = [
    ("price-list.md", "Progressive lenses start at £189 per pair. Single vision lenses start from £49 per pair.",
     "pricing"),
    ("children.md", "Children's bifocal and progressive lenses: £95 per pair. Children's single vision lenses: "
                    "£35 per pair.", "pricing"),
    ("hours.md", "We are open Monday to Friday from 9:00 to 17:30. Sunday: closed.", "contact"),
]
CLEAR = [
    ("prices.md", "Progressive lenses cost from £249. Single vision lenses cost from £65 per pair.", "pricing"),
    ("kids.md", "Children's bifocal and varifocal lenses: £140 per pair.", "pricing"),
]
QUESTION = "What do progressive lenses cost?"


@pytest.fixture
def tenants(two_practices):
    return two_practices(BRIGHT, CLEAR)


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        name = re.search(r"^event: (.*)$", block, re.M)
        data = re.search(r"^data: (.*)$", block, re.M)
        events.append((name.group(1) if name else "message", json.loads(data.group(1)) if data else {}))
    return events


def test_extractive_answer_cites_own_documents_and_is_stored(client, tenants):
    _, headers, _, _ = tenants
    r = client.post("/api/chat", json={"message": QUESTION}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"]["mode"] == "extractive" and body["metadata"]["usedExternalAI"] is False
    assert body["isRelevant"] is True and 0 < body["confidence"] <= 1
    assert "£189" in body["answer"] and "£249" not in body["answer"]
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])}
    assert cited and all(1 <= n <= len(body["sources"]) for n in cited)
    price_line = next(line for line in body["answer"].splitlines() if "£189" in line)
    n = int(re.findall(r"\[(\d+)\]", price_line)[0])
    assert body["sources"][n - 1]["filename"] == "price-list.md"
    assert set(body["sources"][0]) >= {"document_id", "filename", "snippet", "similarity"}
    assert body["sources"][0]["document_id"]
    assert {"responseTime", "queryType", "usedExternalAI", "mode"} <= set(body["metadata"])

    conversation = body["conversationId"]
    listed = client.get("/api/conversations", headers=headers).json()["conversations"]
    assert [c["id"] for c in listed] == [conversation]
    detail = client.get(f"/api/conversations/{conversation}", headers=headers).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][1]["content"] == body["answer"]
    assert detail["messages"][1]["sources"][0]["filename"] == body["sources"][0]["filename"]


def test_conversations_are_private_to_user_and_company(client, tenants, make_user):
    a, a_headers, _, b_headers = tenants
    _, a_colleague = make_user(a)
    conversation = client.post("/api/chat", json={"message": QUESTION}, headers=a_headers).json()["conversationId"]
    for headers in (a_colleague, b_headers):
        assert client.get(f"/api/conversations/{conversation}", headers=headers).status_code == 404
        assert client.delete(f"/api/conversations/{conversation}", headers=headers).status_code == 404
        r = client.post("/api/chat", json={"message": "and for children?", "conversation_id": conversation},
                        headers=headers)
        assert r.status_code == 404 and r.json()["code"] == "CONVERSATION_NOT_FOUND"
        assert client.get("/api/conversations", headers=headers).json()["conversations"] == []
    assert client.delete(f"/api/conversations/{conversation}", headers=a_headers).status_code == 204
    assert client.get(f"/api/conversations/{conversation}", headers=a_headers).status_code == 404
    assert client.get("/api/conversations", headers=a_headers).json()["conversations"] == []


def test_extractive_follow_up_uses_previous_turn(client, tenants):
    _, headers, _, _ = tenants
    first = client.post("/api/chat", json={"message": QUESTION}, headers=headers).json()
    r = client.post("/api/chat", json={"message": "and for children?", "conversation_id": first["conversationId"]},
                    headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["conversationId"] == first["conversationId"]
    assert QUESTION in body["metadata"]["retrievalQuery"]
    assert "£95" in body["answer"]
    assert body["sources"][0]["filename"] == "children.md"
    detail = client.get(f"/api/conversations/{first['conversationId']}", headers=headers).json()
    assert len(detail["messages"]) == 4


def test_nothing_relevant_makes_no_llm_call(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    with llm_client(search_threshold=0.5) as c:
        r = c.post("/api/chat", json={"message": "Who won the 1966 football world cup final?"}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["isRelevant"] is False and body["sources"] == []
    assert "knowledge base" in body["answer"]
    assert body["metadata"]["usedExternalAI"] is False and body["metadata"]["mode"] == "none"
    assert fake_openai.requests == []


def test_nothing_relevant_extractive(client, tenants):
    _, headers, _, _ = tenants
    r = client.post("/api/chat", json={"message": "Who won the 1966 football world cup final?"}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["isRelevant"] is False and body["sources"] == [] and body["confidence"] == 0
    assert "knowledge base" in body["answer"] and body["metadata"]["mode"] == "none"
    assert body["metadata"]["queryType"] == "no_results"


def _prompt_passages(prompt: str) -> dict[int, str]:
    return {int(n): text for n, text in re.findall(r"^\[(\d+)\] \(([^)]*)\)", prompt, re.M)}


def test_openai_answer_prompt_holds_only_own_numbered_chunks(llm_client, tenants, fake_openai):
    a, headers, _, _ = tenants
    fake_openai.reply = "Progressive lenses start at £189 per pair [1]."
    with llm_client() as c:
        r = c.post("/api/chat", json={"message": QUESTION}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "Progressive lenses start at £189 per pair [1]."
    assert body["metadata"]["mode"] == "llm" and body["metadata"]["usedExternalAI"] is True
    assert len(fake_openai.requests) == 1
    request = fake_openai.requests[0]
    assert request["model"] == "gpt-4o"
    prompt = fake_openai.prompt_text(request)
    assert "Answer ONLY from the numbered context" in prompt and "not instructions" in prompt
    assert QUESTION in prompt
    assert prompt.index("Answer ONLY") < prompt.index("[1] (") < prompt.index(QUESTION)
    passages = _prompt_passages(prompt)
    assert sorted(passages) == list(range(1, len(body["sources"]) + 1))
    for n, filename in passages.items():
        assert body["sources"][n - 1]["filename"] == filename
    assert passages[1] == "price-list.md"
    assert "£189" in prompt
    for _, text, _ in CLEAR:  # not one word of the other company's documents
        assert text not in prompt
    assert "£249" not in prompt and "£140" not in prompt
    assert a.id not in prompt  # metadata is hidden from the LLM


def test_openai_streaming_sends_tokens_then_sources(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    fake_openai.reply = "Progressive lenses start at £189 per pair [1]. Single vision from £49 [1]."
    with llm_client() as c:
        r = c.post("/api/chat", json={"message": QUESTION}, headers={**headers, "Accept": "text/event-stream"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert [name for name, _ in events[:-1]] == ["token"] * (len(events) - 1)
        assert len(events) > 3
        assert "".join(data["delta"] for _, data in events[:-1]).strip() == fake_openai.reply
        name, final = events[-1]
        assert name == "sources"
        assert final["answer"] == fake_openai.reply and final["sources"][0]["filename"] == "price-list.md"
        assert fake_openai.requests[0]["stream"] is True
        prompt = fake_openai.prompt_text(fake_openai.requests[0])
        passages = _prompt_passages(prompt)
        assert sorted(passages) == list(range(1, len(final["sources"]) + 1))
        assert all(final["sources"][n - 1]["filename"] == name for n, name in passages.items())
        assert [s["citation"] for s in final["sources"]] == sorted(passages)
        assert "£249" not in prompt and "£140" not in prompt
        detail = c.get(f"/api/conversations/{final['conversationId']}", headers=headers).json()
        assert detail["messages"][1]["content"] == fake_openai.reply


def test_extractive_streaming(client, tenants):
    _, headers, _, _ = tenants
    r = client.post("/api/chat", json={"message": QUESTION}, headers={**headers, "Accept": "text/event-stream"})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1][0] == "sources" and events[-1][1]["metadata"]["mode"] == "extractive"
    assert "".join(d["delta"] for n, d in events if n == "token") == events[-1][1]["answer"]


def test_openai_follow_up_is_condensed_with_previous_turn(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants

    def reply(request: dict) -> str:
        prompt = fake_openai.prompt_text(request)
        if "Standalone question:" in prompt:
            return "What do children's progressive lenses cost?"
        return "Children's progressive lenses cost £95 per pair [1]." if "£95" in prompt else "Not covered."

    fake_openai.reply = reply
    with llm_client() as c:
        first = c.post("/api/chat", json={"message": QUESTION}, headers=headers).json()
        r = c.post("/api/chat", json={"message": "and for children?", "conversation_id": first["conversationId"]},
                   headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    condense = fake_openai.prompt_text(fake_openai.requests[1])
    assert QUESTION in condense and "and for children?" in condense  # memory rebuilt from Postgres
    assert body["metadata"]["retrievalQuery"] == "What do children's progressive lenses cost?"
    assert body["answer"] == "Children's progressive lenses cost £95 per pair [1]."
    assert body["sources"][0]["filename"] == "children.md"
    answer_prompt = fake_openai.prompt_text(fake_openai.requests[2])
    assert QUESTION in answer_prompt  # the earlier turn is in the answering call's history too


def test_llm_timeout_is_504_within_the_limit(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    fake_openai.delay_s = 4.0
    with llm_client(llm_timeout_s=1.0, llm_max_retries=1) as c:
        for accept in ("application/json", "text/event-stream"):
            fake_openai.requests.clear()
            start = time.perf_counter()
            r = c.post("/api/chat", json={"message": QUESTION}, headers={**headers, "Accept": accept})
            elapsed = time.perf_counter() - start
            assert r.status_code == 504, r.text
            assert r.json()["code"] == "LLM_TIMEOUT" and r.json()["error"]
            assert len(fake_openai.requests) == 2  # one retry
            # Not a speed check: the client gave up on both attempts instead of waiting for the replies.
            assert elapsed < fake_openai.delay_s * 2
        assert c.get("/api/conversations", headers=headers).json()["conversations"] == []


def test_llm_5xx_is_retried_then_502(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    fake_openai.fail_status = 503
    with llm_client(llm_max_retries=2) as c:
        r = c.post("/api/chat", json={"message": QUESTION}, headers=headers)
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "LLM_UNAVAILABLE"
    assert len(fake_openai.requests) == 3


def test_llm_failure_mid_stream_ends_with_an_error_event(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    fake_openai.reply = "Progressive lenses start at £189 per pair [1]."
    fake_openai.error_after_words = 3
    with llm_client() as c:
        r = c.post("/api/chat", json={"message": QUESTION}, headers={**headers, "Accept": "text/event-stream"})
        assert r.status_code == 200  # the headers were sent with the first token
        events = sse_events(r.text)
        assert [name for name, _ in events] == ["token"] * 3 + ["error"]
        assert events[-1][1]["code"] == "LLM_UNAVAILABLE" and events[-1][1]["error"]
        assert c.get("/api/conversations", headers=headers).json()["conversations"] == []  # half answers not kept


def test_llm_unreadable_response_is_502_not_500(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    fake_openai.malformed = True
    with llm_client() as c:
        for accept in ("application/json", "text/event-stream"):
            r = c.post("/api/chat", json={"message": QUESTION}, headers={**headers, "Accept": accept})
            assert r.status_code == 502, r.text
            assert r.json()["code"] == "LLM_BAD_RESPONSE" and r.json()["error"]


def test_llm_failure_falls_back_to_extractive_when_allowed(llm_client, tenants, fake_openai):
    _, headers, _, _ = tenants
    fake_openai.fail_status = 500
    with llm_client(llm_max_retries=0, llm_fallback_extractive=True) as c:
        r = c.post("/api/chat", json={"message": QUESTION}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["mode"] == "extractive-fallback"
    assert "£189" in r.json()["answer"]


def test_chat_validation_and_permissions(client, tenants, make_company, make_user):
    _, headers, _, _ = tenants
    assert client.post("/api/chat", json={"message": "  "}, headers=headers).json()["code"] == "EMPTY_QUERY"
    r = client.post("/api/chat", json={"message": "x" * 3000}, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "QUERY_TOO_LONG"
    assert client.post("/api/chat", json={}, headers=headers).status_code == 422
    assert client.post("/api/chat", json={"message": QUESTION}).status_code == 401
    assert client.get("/api/conversations").status_code == 401


def test_cli_ask_prints_answer_and_sources(tenants):
    from typer.testing import CliRunner

    from app.cli import app as cli

    a, *_ = tenants
    result = CliRunner().invoke(cli, ["ask", "--company", a.slug, QUESTION])
    assert result.exit_code == 0, result.output
    assert "£189" in result.output and "price-list.md" in result.output and "£249" not in result.output
    assert "extractive" in result.output
    result = CliRunner().invoke(cli, ["ask", "--company", "no-such-practice", QUESTION])
    assert result.exit_code != 0
