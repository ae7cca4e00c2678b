"""Response shapes the HTTP contract fixes, built from domain results: the domain layer
returns what it found; the camelCase field names the seed's clients expect live here."""

from __future__ import annotations

import time
from typing import Any

from retrieval.chat import ChatResult


def chat_body(result: ChatResult) -> dict[str, Any]:
    """The seed's chat response shape (POST /api/chat, the stream's `sources` event, `ils-rag ask`)."""
    return {
        "answer": result.answer,
        "conversationId": result.conversation_id,
        "sources": result.sources,
        "toolsUsed": ["vector_search", "knowledge_base"] + (["llm"] if result.used_external_ai else []),
        "confidence": result.confidence,
        "isRelevant": result.is_relevant,
        "metadata": {
            "responseTime": int((time.perf_counter() - result.started) * 1000),
            "queryType": "knowledge" if result.is_relevant else "no_results",
            "usedExternalAI": result.used_external_ai,
            "mode": result.mode,
            "retrievalQuery": result.retrieval_query,
        },
    }
