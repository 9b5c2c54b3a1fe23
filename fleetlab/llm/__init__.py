"""LLM plumbing for the `llm` strategy: providers (Anthropic, OpenAI-compatible, a replayed model) and the bounded prompt.

The SDKs are imported only when a provider is used, so `import fleetlab` stays fast without them.
"""

from fleetlab.llm.providers import (PROVIDERS, AnthropicProvider, Budget, BudgetSpent, LLMError, OpenAIProvider,
                                    Provider, Reply, make_provider)

__all__ = ["PROVIDERS", "AnthropicProvider", "Budget", "BudgetSpent", "LLMError", "OpenAIProvider", "Provider",
           "Reply", "make_provider"]
