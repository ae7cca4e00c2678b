// @ts-check
/**
 * The ILS platform's `server/services/PythonRAGService.ts`, as modern JavaScript with JSDoc types
 * (Node 20 runs it as is; `tsc --checkJs` or an editor type-checks it; no build step, no npm
 * install). Changed from the implementation plan only where calling the real service requires it:
 *
 * - every call carries `Authorization: Bearer <token>` from a token provider: a platform JWT
 *   (`staticTokenProvider` / your own function), or a service credential exchanged through the
 *   OAuth 2.0 client-credentials flow (`clientCredentialsTokenProvider`, cached per company);
 * - `indexDocument` (the plan's `/api/rag/index-document`, which its client lacked);
 * - errors carry the service's `status` and machine `code` (e.g. TOKEN_EXPIRED, UNKNOWN_COMPANY);
 * - `threshold` and `limit` default with `??` rather than `||`, so `threshold: 0` means "no floor".
 *
 * `threshold` (default 0.7, as in the plan) is a minimum calibrated `score`: the probability that
 * a passage is relevant. Each result carries that `score` and the raw cosine `similarity`.
 * See docs/platform.md of the service for the token contract and the score's calibration.
 */

/** @typedef {{ info?: (...args: unknown[]) => void, warn?: (...args: unknown[]) => void, error: (...args: unknown[]) => void }} Logger */
/** @typedef {(companyId?: string) => Promise<string>} TokenProvider */
/**
 * @typedef {object} RAGSearchResult
 * @property {string} id
 * @property {string} content
 * @property {string | null} filename
 * @property {string | null} category
 * @property {number} similarity  raw cosine similarity
 * @property {number | null} score  calibrated probability that the passage is relevant
 * @property {string | null} [document_id]
 */
/**
 * @typedef {object} RAGSearchResponse
 * @property {string} query
 * @property {RAGSearchResult[]} results
 * @property {number} total_found
 * @property {string} mode
 * @property {number} threshold
 * @property {'score' | 'similarity'} threshold_applies_to
 * @property {number} min_similarity
 */

/** @param {string} name @returns {Logger} */
function createLogger(name) {
  return {
    info: (...args) => console.info(`[${name}]`, ...args),
    warn: (...args) => console.warn(`[${name}]`, ...args),
    error: (...args) => console.error(`[${name}]`, ...args),
  };
}

const logger = createLogger('PythonRAGService');
const RAG_SERVICE_URL = process.env.RAG_SERVICE_URL || 'http://localhost:8001';

/** An HTTP error from the RAG service, with its status and machine-readable code. */
export class RAGServiceError extends Error {
  /**
   * @param {string} message
   * @param {number} status
   * @param {string | undefined} code  the service's `code` (NOT_AUTHENTICATED, TOKEN_EXPIRED, ...)
   * @param {string | undefined} requestId  the service's `request_id`, for its logs
   */
  constructor(message, status, code, requestId) {
    super(message);
    this.name = 'RAGServiceError';
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

/**
 * @param {Response} response
 * @param {string} prefix  the plan's message prefix ("RAG service error", "RAG search error")
 */
async function errorFrom(response, prefix) {
  /** @type {{ error?: string, code?: string, request_id?: string }} */
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status text is all there is
  }
  const detail = body.error ? ` (${body.code}: ${body.error})` : '';
  return new RAGServiceError(`${prefix}: ${response.statusText}${detail}`, response.status, body.code, body.request_id);
}

/**
 * A fixed bearer token, e.g. a platform JWT minted for one request's user and company.
 * @param {string} token
 * @returns {TokenProvider}
 */
export function staticTokenProvider(token) {
  return async () => token;
}

/**
 * Service credentials (`ils-rag clients create`) exchanged for short-lived access tokens at
 * `POST /api/auth/token` (OAuth 2.0 client credentials, HTTP Basic client authentication).
 * Tokens are cached per company until `refreshBeforeSeconds` before they expire; concurrent
 * callers share one exchange.
 *
 * @param {object} options
 * @param {string} options.clientId
 * @param {string} options.clientSecret
 * @param {string} [options.baseUrl]  default RAG_SERVICE_URL
 * @param {string} [options.scope]  space-separated subset of the client's scopes; default all of them
 * @param {string} [options.defaultCompanyId]  used when a call names no company (e.g. embeddings)
 * @param {number} [options.refreshBeforeSeconds]
 * @param {typeof fetch} [options.fetchImpl]
 * @returns {TokenProvider & { invalidate: (companyId?: string) => void }}
 */
export function clientCredentialsTokenProvider({
  clientId, clientSecret, baseUrl = RAG_SERVICE_URL, scope, defaultCompanyId, refreshBeforeSeconds = 30,
  fetchImpl = fetch,
}) {
  /** @type {Map<string, { token: string, expiresAt: number }>} */
  const cache = new Map();
  /** @type {Map<string, Promise<string>>} */
  const pending = new Map();
  // RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined for Basic.
  const basic = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64');

  /** @param {string} key @param {string | undefined} companyId */
  async function exchange(key, companyId) {
    const form = new URLSearchParams({ grant_type: 'client_credentials' });
    if (companyId) form.set('company_id', companyId);
    if (scope) form.set('scope', scope);
    const response = await fetchImpl(`${baseUrl}/api/auth/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Authorization: `Basic ${basic}` },
      body: form,
    });
    if (!response.ok) {
      throw await errorFrom(response, 'RAG token error');
    }
    const data = await response.json();
    cache.set(key, { token: data.access_token, expiresAt: Date.now() + (data.expires_in - refreshBeforeSeconds) * 1000 });
    return data.access_token;
  }

  /** @type {TokenProvider & { invalidate: (companyId?: string) => void }} */
  const provider = async (companyId) => {
    const company = companyId ?? defaultCompanyId;
    const key = company ?? '';
    const cached = cache.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached.token;
    let inFlight = pending.get(key);
    if (!inFlight) {
      inFlight = exchange(key, company).finally(() => pending.delete(key));
      pending.set(key, inFlight);
    }
    return inFlight;
  };
  provider.invalidate = (companyId) => {
    cache.delete(companyId ?? defaultCompanyId ?? '');
  };
  return provider;
}

/** The token provider the singleton uses: a service credential from the environment, if set. */
function providerFromEnvironment() {
  const clientId = process.env.RAG_CLIENT_ID;
  const clientSecret = process.env.RAG_CLIENT_SECRET;
  if (clientId && clientSecret) {
    return clientCredentialsTokenProvider({ clientId, clientSecret, defaultCompanyId: process.env.RAG_COMPANY_ID });
  }
  return async () => {
    throw new Error('PythonRAGService needs a token provider (or RAG_CLIENT_ID and RAG_CLIENT_SECRET)');
  };
}

export class PythonRAGService {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl]  default RAG_SERVICE_URL
   * @param {TokenProvider & { invalidate?: (companyId?: string) => void }} [options.tokenProvider]
   * @param {Logger} [options.logger]
   */
  constructor({ baseUrl = RAG_SERVICE_URL, tokenProvider = providerFromEnvironment(), logger: log = logger } = {}) {
    this.baseUrl = baseUrl;
    this.tokenProvider = tokenProvider;
    this.logger = log;
  }

  /**
   * JSON POST with the bearer token for `companyId`. A 401 drops the cached token, so the next
   * call exchanges the credential again (after a revocation, restart or key rotation).
   * @param {string} path @param {unknown} body @param {string | undefined} companyId @param {string} prefix
   */
  async post(path, body, companyId, prefix) {
    const token = await this.tokenProvider(companyId);
    const response = await fetch(`${this.baseUrl}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      if (response.status === 401) this.tokenProvider.invalidate?.(companyId);
      throw await errorFrom(response, prefix);
    }
    return response.json();
  }

  /**
   * Generate embedding using Python service
   * @param {string} text
   * @param {string} [companyId]  whose token to use (default: the provider's default company)
   * @returns {Promise<number[]>}
   */
  async generateEmbedding(text, companyId) {
    try {
      const data = await this.post('/api/embeddings/generate', { text }, companyId, 'RAG service error');
      return data.embedding;
    } catch (error) {
      this.logger.error('Failed to generate embedding:', error);
      throw error;
    }
  }

  /**
   * Search knowledge base using RAG
   * @param {string} query
   * @param {string} companyId  must be the token's company (the service refuses any other)
   * @param {{ limit?: number, threshold?: number }} [options]  threshold: minimum calibrated score
   * @returns {Promise<RAGSearchResponse>}
   */
  async searchKnowledge(query, companyId, options = {}) {
    try {
      return await this.post('/api/rag/search', {
        query,
        company_id: companyId,
        limit: options.limit ?? 5,
        threshold: options.threshold ?? 0.7,
      }, companyId, 'RAG search error');
    } catch (error) {
      this.logger.error('RAG search failed:', error);
      throw error;
    }
  }

  /**
   * Index a new document (plain text) into the company's knowledge base.
   * @param {string} companyId
   * @param {{ filename: string, content: string, category?: string }} document
   * @returns {Promise<{ document_id: string, status: 'indexed' }>}
   */
  async indexDocument(companyId, { filename, content, category }) {
    try {
      return await this.post('/api/rag/index-document', { filename, content, category }, companyId,
        'RAG index error');
    } catch (error) {
      this.logger.error('Document indexing failed:', error);
      throw error;
    }
  }
}

export const pythonRAGService = new PythonRAGService();
