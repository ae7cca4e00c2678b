"""`POST /api/chat` (JSON, or Server-Sent Events with `Accept: text/event-stream`) and the
caller's conversations. Company and user come from the token; other users' conversations
are not found (404)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field

from app.deps import AppSettings, CurrentUser, TenantSession, require
from app.limits import rate_limited
from app.request_models import RequestModel
from app.responses import chat_body
from app.routes.search import HARD_MAX_CHARS, check_text
from auth.permissions import Permission
from retrieval import conversations
from retrieval.chat import ChatService

router = APIRouter(tags=["chat"])
chat_user = require(Permission.CHAT)
chat_limited = rate_limited(Permission.CHAT, "chat")  # permission, then CHAT_RATE_PER_MINUTE
_ERRORS = {401: {"description": "NOT_AUTHENTICATED / INVALID_TOKEN / TOKEN_EXPIRED"},
           403: {"description": "FORBIDDEN: lacks chat:use"},
           404: {"description": "CONVERSATION_NOT_FOUND"}}
_LLM_ERRORS = {502: {"description": "LLM_UNAVAILABLE"}, 504: {"description": "LLM_TIMEOUT"},
               429: {"description": "RATE_LIMITED (CHAT_RATE_PER_MINUTE per user), with Retry-After"},
               422: {"description": "VALIDATION_ERROR / QUERY_TOO_LONG / EMPTY_QUERY"}}


class ChatRequest(RequestModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    message: str = Field(min_length=1, max_length=HARD_MAX_CHARS)
    conversation_id: str | None = Field(default=None, max_length=64, alias="conversationId")


class Quote(BaseModel):
    start: int = Field(description="Offset of the quoted sentence's first character in `passage`.")
    end: int = Field(description="Offset just past its last character: passage[start:end] is the sentence.")


class ChatSource(BaseModel):
    citation: int = Field(description="The [n] the answer cites this source by.")
    document_id: str | None
    filename: str | None
    snippet: str
    similarity: float
    passage: str = Field(default="", description="The whole passage as shown to the reader (whitespace-normalised).")
    quotes: list[Quote] = Field(default_factory=list, description="The answer's sentences citing this source.")


class ChatMetadata(BaseModel):
    responseTime: int
    queryType: str
    usedExternalAI: bool
    mode: str = Field(description="llm, extractive, extractive-fallback, or none (nothing relevant found)")
    retrievalQuery: str


class ChatResponse(BaseModel):
    answer: str
    conversationId: str
    sources: list[ChatSource]
    toolsUsed: list[str]
    confidence: float
    isRelevant: bool
    metadata: ChatMetadata


class MessageOut(BaseModel):
    role: str
    content: str
    sources: list[dict[str, Any]] | None
    mode: str | None = Field(default=None, description="An answer's mode (as in the chat metadata); null for "
                                                       "questions and for answers stored before it was kept.")
    created_at: datetime


class ConversationOut(BaseModel):
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int | None = None


class ConversationList(BaseModel):
    conversations: list[ConversationOut]


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]


def _sse(events: Iterator[tuple[str, Any]]) -> Iterator[bytes]:
    for name, data in events:
        payload = {"delta": data} if name == "token" else chat_body(data) if name == "sources" else data
        yield format_sse_event(event=name, data_str=json.dumps(payload, ensure_ascii=False))


@router.post("/api/chat", response_model=ChatResponse, responses={**_ERRORS, **_LLM_ERRORS, 200: {
    "content": {"text/event-stream": {"description": "token events, then one sources event (the JSON body)"}}}})
def chat(body: ChatRequest, request: Request, settings: AppSettings,
         user: CurrentUser = Depends(chat_limited)) -> Any:
    message = check_text(body.message, settings, what="message")
    service = ChatService(user.company_id, user.id, settings)
    if "text/event-stream" in request.headers.get("accept", ""):
        events = service.stream(message, body.conversation_id)  # LLM errors before the first token raise here
        return EventSourceResponse(_sse(events), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return ChatResponse.model_validate(chat_body(service.ask(message, body.conversation_id)))


@router.get("/api/conversations", response_model=ConversationList, responses=_ERRORS)
def list_conversations(session: TenantSession, user: CurrentUser = Depends(chat_user)) -> ConversationList:
    rows = conversations.list_conversations(session, user.company_id, user.id)
    return ConversationList(conversations=[
        ConversationOut(id=c.id, title=c.title, created_at=c.created_at, updated_at=c.updated_at,
                        message_count=n) for c, n in rows])


@router.get("/api/conversations/{conversation_id}", response_model=ConversationDetail, responses=_ERRORS)
def get_conversation(conversation_id: str, session: TenantSession,
                     user: CurrentUser = Depends(chat_user)) -> ConversationDetail:
    row = conversations.get_conversation(session, user.company_id, user.id, conversation_id)
    turns = conversations.history(session, user.company_id, user.id, conversation_id)
    return ConversationDetail(id=row.id, title=row.title, created_at=row.created_at, updated_at=row.updated_at,
                              message_count=len(turns),
                              messages=[MessageOut(role=t.role, content=t.content, sources=t.sources, mode=t.mode,
                                                   created_at=t.created_at) for t in turns])


@router.delete("/api/conversations/{conversation_id}", status_code=204, response_class=Response, responses=_ERRORS)
def delete_conversation(conversation_id: str, session: TenantSession,
                        user: CurrentUser = Depends(chat_user)) -> Response:
    conversations.delete_conversation(session, user.company_id, user.id, conversation_id)
    return Response(status_code=204)
