"""Conversations and their messages, per company and user, in the tables of migration 0001.

Chat memory is rebuilt from these rows on every turn, so any worker can answer the next
message of any conversation. Lookups always carry company_id AND user_id: another user's or
another company's conversation id is simply not found.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from sqlalchemy import BigInteger, DateTime, Identity, String, Text, delete, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db.engines import Base
from core.errors import NotFound

TITLE_CHARS = 80


class Conversation(Base):
    __tablename__ = "conversations"

    company_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Message(Base):
    __tablename__ = "messages"

    company_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    sources: Mapped[Any] = mapped_column(JSONB, nullable=True)
    mode: Mapped[str | None] = mapped_column(String(24), nullable=True)  # assistant turns: how it was answered
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    sources: list[dict[str, Any]] | None
    created_at: datetime
    mode: str | None = None


def _owned(session: Session, company_id: str, user_id: str, conversation_id: str) -> Conversation:
    row = session.scalar(select(Conversation).where(Conversation.company_id == company_id,
                                                    Conversation.id == conversation_id,
                                                    Conversation.user_id == user_id))
    if row is None:
        raise NotFound(f"No conversation {conversation_id}; list yours with GET /api/conversations",
                       code="CONVERSATION_NOT_FOUND")
    return row


def open_conversation(session: Session, company_id: str, user_id: str, conversation_id: str | None,
                      first_message: str) -> Conversation:
    """The caller's conversation `conversation_id`, or a new one titled by the first message."""
    if conversation_id:
        return _owned(session, company_id, user_id, conversation_id)
    title = " ".join(first_message.split())[:TITLE_CHARS]
    row = Conversation(company_id=company_id, id=str(uuid.uuid4()), user_id=user_id, title=title)
    session.add(row)
    session.flush()
    return row


def history(session: Session, company_id: str, user_id: str, conversation_id: str) -> list[Turn]:
    _owned(session, company_id, user_id, conversation_id)
    rows = session.scalars(select(Message).where(Message.company_id == company_id,
                                                 Message.conversation_id == conversation_id)
                           .order_by(Message.id)).all()
    return [Turn(r.role, r.content, r.sources, r.created_at, r.mode) for r in rows]


def chat_history(turns: list[Turn]) -> list[ChatMessage]:
    """LlamaIndex memory messages for a stored conversation."""
    roles = {"user": MessageRole.USER, "assistant": MessageRole.ASSISTANT}
    return [ChatMessage(role=roles[t.role], content=t.content) for t in turns if t.role in roles]


def append_turn(session: Session, company_id: str, conversation_id: str, question: str, answer: str,
                sources: list[dict[str, Any]], mode: str | None = None) -> None:
    session.add(Message(company_id=company_id, conversation_id=conversation_id, role="user", content=question))
    session.add(Message(company_id=company_id, conversation_id=conversation_id, role="assistant", content=answer,
                        sources=sources, mode=mode))
    session.execute(update(Conversation).where(Conversation.company_id == company_id,
                                               Conversation.id == conversation_id).values(updated_at=func.now()))


def list_conversations(session: Session, company_id: str, user_id: str) -> list[tuple[Conversation, int]]:
    counts = (select(Message.conversation_id, func.count().label("n")).where(Message.company_id == company_id)
              .group_by(Message.conversation_id).subquery())
    rows = session.execute(
        select(Conversation, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.conversation_id == Conversation.id)
        .where(Conversation.company_id == company_id, Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc())
    ).all()
    return [(row[0], int(row[1])) for row in rows]


def get_conversation(session: Session, company_id: str, user_id: str, conversation_id: str) -> Conversation:
    return _owned(session, company_id, user_id, conversation_id)


def delete_conversation(session: Session, company_id: str, user_id: str, conversation_id: str) -> None:
    _owned(session, company_id, user_id, conversation_id)
    session.execute(delete(Message).where(Message.company_id == company_id,
                                          Message.conversation_id == conversation_id))
    session.execute(delete(Conversation).where(Conversation.company_id == company_id,
                                               Conversation.id == conversation_id))


_FOLLOW_UP_OPENERS = ("and ", "and,", "but ", "or ", "also ", "what about", "how about", "what if", "same ", "then ",
                      "so ", "ok ", "okay ", "why", "really", "is that", "are they", "does that", "does it",
                      "do they", "can it", "can they", "is it", "for ", "in ", "with ", "without ")
_REFERRING = frozenset([
    "it", "its", "it's", "they", "them", "their", "theirs", "that", "those", "these", "this", "one", "ones", "he",
    "she", "him", "her", "there", "same", "above"
])
_FILLER = frozenset([
    "a", "an", "the", "and", "or", "but", "so", "what", "about", "how", "is", "are", "was", "were", "do", "does",
    "did", "can", "could", "would", "should", "will", "for", "in", "on", "of", "to", "with", "without", "too",
    "also", "then", "ok", "okay", "please", "thanks", "why", "really", "yes", "no", "much", "many", "more", "less"
])


def depends_on_conversation(message: str) -> bool:
    """Whether `message` only makes sense after what was said before ("and for children?",
    "how much is it?", "why?"), rather than standing on its own ("Who won the football last
    night?", "What is the no-show fee?").

    A rule on the words rather than a model: it must be cheap (it runs before retrieval on
    every turn) and predictable - a standalone question condensed with an unrelated
    conversation is what sent a football question back with anti-reflective coating bullets.
    Dependent: opens like a continuation ("and", "what about", "for ..."), refers back ("it",
    "they", "that") with at most two words of its own subject, or has no subject word at all.
    """
    text = " ".join(message.lower().split())
    tokens = re.findall(r"[a-z0-9£'’]+", text)
    if not tokens:
        return False
    subject = [t for t in tokens if t not in _FILLER and t not in _REFERRING and len(t) > 1]
    if text.startswith(_FOLLOW_UP_OPENERS) and len(subject) <= 4:
        return True
    if any(t in _REFERRING for t in tokens) and len(subject) <= 2:
        return True
    return not subject
