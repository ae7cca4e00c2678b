"""Answers with citations: LlamaIndex's CondensePlusContextChatEngine over the tenant
retriever when an LLM is configured, the extractive answerer otherwise.

One turn: load the conversation (company + user scoped) from Postgres, rebuild the chat
memory from it, condense the message into a standalone question only if it depends on the
conversation ("and for children?"; see conversations.depends_on_conversation), retrieve the
company's chunks above the threshold, and - only if something passed - ask the LLM with the
chunks numbered [1]..[n]. `sources[n-1]` is passage [n]: its whole text as the reader sees it
(`passage`) and the character spans of the statements the answer quotes from it (`quotes`),
so a client can open a citation on the very sentence it supports. The turn is stored
afterwards, sources included, so a reopened conversation shows the same citations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.chat_engine.types import StreamingAgentChatResponse
from llama_index.core.llms import LLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from sqlalchemy.exc import SQLAlchemyError

from core.db.engines import session_scope
from core.db.tenant_scope import tenant
from core.embeddings import get_embed_model
from core.errors import ServiceError
from core.settings import Settings
from retrieval import conversations, prompts
from retrieval.extractive import Answer, answer, llm_quotes, passages
from retrieval.llm import LLMBadResponse, LLMError, build_llm, translate_llm_error
from retrieval.passages import Rendered
from retrieval.retriever import TenantRetriever

logger = logging.getLogger(__name__)

SNIPPET_CHARS = 300
MEMORY_TOKENS = 3000


class NothingRelevant(Exception):
    """Raised inside the engine when no chunk passed the threshold, before any answer LLM call."""

    def __init__(self, query: str) -> None:
        super().__init__(query)
        self.query = query


class NumberedContext(BaseNodePostprocessor):
    """Prefix each passage with `[n] (filename)` so the LLM can cite it, and hide metadata from the LLM."""

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        numbered = []
        for number, item in enumerate(nodes, start=1):
            source = " ".join(str(item.node.metadata.get("filename") or "document").split())
            node = TextNode(id_=item.node.node_id, text=f"[{number}] ({source})\n{item.node.get_content()}",
                            metadata=dict(item.node.metadata))
            node.excluded_llm_metadata_keys = list(node.metadata)
            numbered.append(NodeWithScore(node=node, score=item.score))
        return numbered


EMPTY_REPLY = "The language model sent an empty reply; try again shortly."


class TenantChatEngine(CondensePlusContextChatEngine):
    """Stops before the answering LLM call when retrieval found nothing (no tokens spent), and
    condenses only messages that depend on the conversation: a standalone question is
    retrieved on its own words (and costs no condensing call)."""

    def _condense_question(self, chat_history: list[ChatMessage], latest_message: str) -> str:
        if not conversations.depends_on_conversation(latest_message):
            return latest_message
        return super()._condense_question(chat_history, latest_message)

    async def _acondense_question(self, chat_history: list[ChatMessage], latest_message: str) -> str:
        if not conversations.depends_on_conversation(latest_message):
            return latest_message
        return await super()._acondense_question(chat_history, latest_message)

    def _get_nodes(self, message: str) -> list[NodeWithScore]:
        nodes = super()._get_nodes(message)
        if not nodes:
            raise NothingRelevant(message)
        return nodes

    def stream_chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> StreamingAgentChatResponse:
        """The parent's stream_chat without its memory-writer thread.

        Why: that thread consumes the LLM stream while `response_gen` polls its queue with
        `time.sleep(0)`, a busy loop that holds a CPU core for as long as the LLM takes. The
        memory it writes is thrown away here anyway (conversations live in Postgres), so the
        tokens are read straight from the LLM stream in the caller's thread, and LLM errors
        surface there as themselves.
        """
        synthesizer, context_source, context_nodes = self._run_c3(message, chat_history, streaming=True)
        response = synthesizer.synthesize(message, context_nodes)
        if not isinstance(response, StreamingResponse) or response.response_gen is None:
            raise LLMBadResponse(EMPTY_REPLY)
        tokens = response.response_gen

        def deltas() -> Iterator[ChatResponse]:
            for token in tokens:
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=token), delta=token)

        return StreamingAgentChatResponse(chat_stream=deltas(), sources=[context_source], source_nodes=context_nodes,
                                          is_writing_to_memory=False)


@dataclass
class ChatResult:
    answer: str
    conversation_id: str
    sources: list[dict[str, Any]]
    is_relevant: bool
    mode: str  # "llm" | "extractive" | "none"
    used_external_ai: bool
    retrieval_query: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def confidence(self) -> float:
        return round(max((s["similarity"] for s in self.sources), default=0.0), 4)


def _snippet(node: NodeWithScore) -> str:
    text = node.node.get_content()
    if text.startswith("[") and "\n" in text:  # drop the NumberedContext header
        text = text.split("\n", 1)[1]
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"


def _unnumbered(nodes: list[NodeWithScore]) -> list[NodeWithScore]:
    """The engine's source nodes without the `[n] (file)` header NumberedContext gave them."""
    out = []
    for n in nodes:
        text = n.node.get_content()
        if text.startswith("[") and "\n" in text:
            node = TextNode(id_=n.node.node_id, text=text.split("\n", 1)[1], metadata=dict(n.node.metadata),
                            start_char_idx=getattr(n.node, "start_char_idx", None))
            n = NodeWithScore(node=node, score=n.score)
        out.append(n)
    return out


def source_list(nodes: list[NodeWithScore], rendered: list[Rendered] | None = None,
                quotes: list[list[dict[str, int]]] | None = None) -> list[dict[str, Any]]:
    """The API's sources: `passage` is the whole chunk as statements (whitespace-normalised),
    `quotes` the [start, end) character spans in it of the answer's sentences citing it."""
    rendered = rendered if rendered is not None else passages(nodes)
    quotes = quotes if quotes is not None else [[] for _ in nodes]
    return [{"citation": number, "document_id": n.node.metadata.get("source_document_id"),
             "filename": n.node.metadata.get("filename"), "snippet": _snippet(n),
             "similarity": round(float(n.score or 0.0), 4), "passage": passage.passage, "quotes": quoted}
            for number, (n, passage, quoted) in enumerate(zip(nodes, rendered, quotes, strict=True), start=1)]


def llm_source_list(answer_text: str, nodes: list[NodeWithScore]) -> list[dict[str, Any]]:
    nodes = _unnumbered(nodes)
    rendered = passages(nodes)
    return source_list(nodes, rendered, llm_quotes(answer_text, rendered))


class ChatService:
    """One company's user asking questions; the company comes from the verified token."""

    def __init__(self, company_id: str, user_id: str, settings: Settings,
                 embed_model: BaseEmbedding | None = None, *, store: bool = True) -> None:
        self.company_id = company_id
        self.store = store  # False for one-shot questions (the CLI): nothing is written
        self.user_id = user_id
        self.settings = settings
        self.embed_model = embed_model or get_embed_model()
        self.llm: LLM | None = build_llm(self.settings)

    # -- pieces ---------------------------------------------------------------------------
    def _retriever(self) -> TenantRetriever:
        # "rank": the passages reach the answering step in the mode's own ranking (the hybrid fusion by default).
        return TenantRetriever(self.company_id, top_k=self.settings.chat_top_k, order="rank",
                               embed_model=self.embed_model, settings=self.settings)

    def _history(self, conversation_id: str | None) -> list[conversations.Turn]:
        if not conversation_id:
            return []
        with tenant(self.company_id), session_scope() as session:
            return conversations.history(session, self.company_id, self.user_id, conversation_id)

    def _engine(self, turns: list[conversations.Turn]) -> TenantChatEngine:
        assert self.llm is not None
        memory = ChatMemoryBuffer.from_defaults(chat_history=conversations.chat_history(turns),
                                                token_limit=MEMORY_TOKENS)
        return TenantChatEngine(retriever=self._retriever(), llm=self.llm, memory=memory,
                                context_prompt=prompts.CONTEXT_PROMPT,
                                context_refine_prompt=prompts.CONTEXT_REFINE_PROMPT,
                                condense_prompt=prompts.CONDENSE_PROMPT, node_postprocessors=[NumberedContext()])

    @staticmethod
    def extractive_query(message: str, turns: list[conversations.Turn]) -> str:
        """Condensing without an LLM: a message that depends on the conversation takes its
        subject from the previous user question; one that stands on its own is left alone."""
        if not conversations.depends_on_conversation(message):
            return message
        previous = next((t.content for t in reversed(turns) if t.role == "user"), None)
        return f"{previous} {message}" if previous else message

    def _extractive(self, message: str, turns: list[conversations.Turn], conversation_id: str | None,
                    started: float) -> ChatResult:
        query = self.extractive_query(message, turns)
        nodes = self._retriever().retrieve(query)
        if not nodes:
            return self._nothing(query, conversation_id, started)
        questions = [query] if query == message else [query, message]
        found: Answer = answer(self.company_id, questions, nodes, self.embed_model, self.settings.embedding_key)
        if found.found_nothing:
            return self._nothing(query, conversation_id, started)
        return ChatResult(answer=found.text, conversation_id=conversation_id or "",
                          sources=source_list(nodes, found.passages, found.quotes()), is_relevant=True,
                          mode="extractive", used_external_ai=False, retrieval_query=query, started=started)

    def _nothing(self, query: str, conversation_id: str | None, started: float) -> ChatResult:
        return ChatResult(answer=prompts.NOTHING_FOUND, conversation_id=conversation_id or "", sources=[],
                          is_relevant=False, mode="none", used_external_ai=False, retrieval_query=query,
                          started=started)

    def _store(self, message: str, result: ChatResult, conversation_id: str | None) -> None:
        if not self.store:
            return
        with tenant(self.company_id), session_scope() as session:
            row = conversations.open_conversation(session, self.company_id, self.user_id, conversation_id, message)
            conversations.append_turn(session, self.company_id, row.id, message, result.answer, result.sources,
                                      result.mode)
            result.conversation_id = row.id

    def _llm_failed(self, exc: Exception) -> ServiceError:
        """The API error for a failure inside the chat engine. Our own errors (ServiceError,
        database errors) propagate unchanged; OpenAI SDK errors map to 502/504; anything else
        was raised while reading the LLM's reply, which is the endpoint's fault: 502."""
        if isinstance(exc, LLMError):
            return exc
        if isinstance(exc, ServiceError | SQLAlchemyError):
            raise exc
        error = translate_llm_error(exc)
        if error is None:
            logger.exception("unreadable LLM response")
            error = LLMBadResponse("The language model's reply could not be read; try again shortly.")
        else:
            logger.warning("LLM call failed (%s): %s", error.code, exc)
        return error

    def _without_llm(self, exc: Exception, message: str, turns: list[conversations.Turn],
                     conversation_id: str | None, started: float) -> ChatResult:
        """The turn's result when the engine stopped before an answer; called from inside the
        `except` block, so a re-raise keeps the original exception as its cause.

        One place for both `ask` and `stream`: NothingRelevant is no failure (retrieval found
        nothing, no LLM call was made); anything else is an LLM failure, which answers
        extractively when `llm_fallback_extractive` is on and raises the API error otherwise.
        """
        if isinstance(exc, NothingRelevant):
            return self._nothing(exc.query, conversation_id, started)
        error = self._llm_failed(exc)
        if not self.settings.llm_fallback_extractive:
            raise error from exc
        result = self._extractive(message, turns, conversation_id, started)
        result.mode = "extractive-fallback"
        return result

    # -- one turn -------------------------------------------------------------------------
    def ask(self, message: str, conversation_id: str | None = None) -> ChatResult:
        started = time.perf_counter()
        turns = self._history(conversation_id)  # 404 before any work for a foreign id
        if self.llm is None:
            result = self._extractive(message, turns, conversation_id, started)
        else:
            try:
                response = self._engine(turns).chat(message)
                if not str(response.response or "").strip():
                    raise LLMBadResponse(EMPTY_REPLY)
                query = str(response.sources[0].raw_input.get("message", message)) if response.sources else message
                result = ChatResult(answer=str(response.response), conversation_id=conversation_id or "",
                                    sources=llm_source_list(str(response.response), response.source_nodes),
                                    is_relevant=True, mode="llm",
                                    used_external_ai=True, retrieval_query=query, started=started)
            except Exception as exc:
                result = self._without_llm(exc, message, turns, conversation_id, started)
        self._store(message, result, conversation_id)
        return result

    def stream(self, message: str, conversation_id: str | None = None) -> Iterator[tuple[str, Any]]:
        """("token", text) events, then one ("sources", ChatResult) event. An LLM failure before the
        first token raises a ServiceError (so the route can still answer 502/504); a failure
        after it ends the stream with an ("error", {...}) event."""
        started = time.perf_counter()
        turns = self._history(conversation_id)
        result: ChatResult | None = None
        if self.llm is not None:
            try:
                streaming = self._engine(turns).stream_chat(message)
                tokens = streaming.response_gen
                # The LLM request happens on the first read; a reply with no text at all is a
                # bad response (502), found before anything is sent.
                first = next((token for token in tokens if token), None)
                if first is None:
                    raise LLMBadResponse(EMPTY_REPLY)
            except Exception as exc:
                result = self._without_llm(exc, message, turns, conversation_id, started)
            else:
                return self._stream_llm(message, conversation_id, streaming, tokens, first, started)
        if result is None:
            result = self._extractive(message, turns, conversation_id, started)
        return self._stream_done(message, conversation_id, result)

    def _stream_llm(self, message: str, conversation_id: str | None, streaming: StreamingAgentChatResponse,
                    tokens: Iterator[str], first: str, started: float) -> Iterator[tuple[str, Any]]:
        parts = [first]
        try:
            yield "token", first
            for token in tokens:  # the same generator: response_gen makes a new one per access
                parts.append(token)
                yield "token", token
        except Exception as exc:
            error = translate_llm_error(exc)
            logger.warning("LLM stream failed: %s", exc)
            yield "error", {"error": error.message if error else "The answer stream failed; try again.",
                            "code": error.code if error else "STREAM_FAILED"}
            return
        query = streaming.sources[0].raw_input.get("message", message) if streaming.sources else message
        text = "".join(parts).strip()
        result = ChatResult(answer=text, conversation_id=conversation_id or "",
                            sources=llm_source_list(text, streaming.source_nodes), is_relevant=True, mode="llm",
                            used_external_ai=True, retrieval_query=str(query), started=started)
        self._store(message, result, conversation_id)
        yield "sources", result

    def _stream_done(self, message: str, conversation_id: str | None,
                     result: ChatResult) -> Iterator[tuple[str, Any]]:
        self._store(message, result, conversation_id)
        # No LLM: send the prepared answer line by line so clients handle one stream shape.
        for line in result.answer.splitlines(keepends=True):
            yield "token", line
        yield "sources", result
