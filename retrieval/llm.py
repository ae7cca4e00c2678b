"""The answering LLM, chosen by settings, and the mapping of its failures to API errors.

- OPENAI_API_KEY (and optionally OPENAI_BASE_URL): OpenAI's GPT-4 family (LLM_MODEL, default gpt-4o)
  or any OpenAI-compatible endpoint, through llama-index-llms-openai;
- neither: no LLM at all, answers are extractive (retrieval/extractive.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter
from typing import Any

import openai
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, ChatResponseGen, LLMMetadata
from llama_index.llms.openai import OpenAI
from llama_index.llms.openai.utils import openai_modelname_to_contextsize

from core import metrics
from core.errors import ServiceError
from core.settings import Settings

# OpenAI's SDK needs some key; compatible servers reached by base URL often ignore it.
NO_KEY = "not-needed"


class LLMError(ServiceError):
    """The answering LLM failed (after the SDK's retries): 502/504 to the caller, or an
    extractive answer when LLM_FALLBACK_EXTRACTIVE is on."""


class LLMTimeout(LLMError):
    status_code = 504
    code = "LLM_TIMEOUT"


class LLMUnavailable(LLMError):
    status_code = 502
    code = "LLM_UNAVAILABLE"


class LLMBadResponse(LLMError):
    """The endpoint answered 200 with something that is not a usable chat completion
    (OpenAI-compatible servers vary); a 502 with a code, never a 500."""

    status_code = 502
    code = "LLM_BAD_RESPONSE"


class ServiceOpenAI(OpenAI):
    """llama-index's OpenAI LLM with one retry layer and any model name.

    Why a subclass: the stock class retries twice over (a tenacity decorator with 1-20 s
    waits around the SDK's own retries), so a dead endpoint could take minutes. Here the
    decorator is off (max_retries=0 on the model) and the OpenAI SDK alone retries timeouts,
    connection errors, 429 and 5xx `sdk_max_retries` times with its short exponential backoff.
    Unknown model names (OpenAI-compatible servers) get LLM_CONTEXT_WINDOW instead of an error.
    """

    sdk_max_retries: int = 2
    fallback_context_window: int = 8192

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        started = perf_counter()
        try:
            response = super()._chat(messages, **kwargs)
        except Exception as exc:
            _llm_observed(started, exc)
            raise
        _llm_observed(started, None)
        return response

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        # The request is made when the stream is first read: time the whole stream, as read.
        started = perf_counter()
        try:
            yield from super()._stream_chat(messages, **kwargs)
        except Exception as exc:
            _llm_observed(started, exc)
            raise
        _llm_observed(started, None)

    def _get_credential_kwargs(self, is_async: bool = False) -> dict[str, Any]:
        return {**super()._get_credential_kwargs(is_async), "max_retries": self.sdk_max_retries}

    @property
    def metadata(self) -> LLMMetadata:
        try:
            openai_modelname_to_contextsize(self._get_model_name())
            return super().metadata
        except ValueError:
            return LLMMetadata(context_window=self.fallback_context_window, num_output=self.max_tokens or -1,
                               is_chat_model=True, is_function_calling_model=False, model_name=self.model)


def _llm_observed(started: float, error: BaseException | None) -> None:
    """LLM time by outcome, and failures by the code the caller will see (LLM_TIMEOUT, ...)."""
    metrics.LLM_SECONDS.labels("ok" if error is None else "error").observe(perf_counter() - started)
    if error is not None:
        translated = translate_llm_error(error)
        metrics.LLM_ERRORS.labels(translated.code if translated is not None else "LLM_BAD_RESPONSE").inc()


def llm_configured(settings: Settings) -> bool:
    return bool(settings.openai_api_key or settings.openai_base_url)


def build_llm(settings: Settings) -> ServiceOpenAI | None:
    """The configured LLM, or None for extractive mode."""
    if not llm_configured(settings):
        return None
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else NO_KEY
    return ServiceOpenAI(model=settings.llm_model, api_key=key, api_base=settings.openai_base_url,
                         timeout=settings.llm_timeout_s, max_retries=0, temperature=0.1,
                         sdk_max_retries=max(0, settings.llm_max_retries),
                         fallback_context_window=settings.llm_context_window)


def translate_llm_error(exc: BaseException) -> LLMError | None:
    """A ServiceError for an LLM failure, or None if `exc` is not one."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeout("The language model did not answer in time; try again shortly.")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in (401, 403):
            return LLMUnavailable("The language model refused our credentials; check OPENAI_API_KEY.")
        return LLMUnavailable(f"The language model service failed (HTTP {exc.status_code}); try again shortly.")
    if isinstance(exc, openai.APIConnectionError | openai.OpenAIError):
        return LLMUnavailable("The language model service cannot be reached; try again shortly.")
    return None
