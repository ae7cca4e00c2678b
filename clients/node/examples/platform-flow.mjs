// The platform's calls end to end, as the Node backend makes them; prints one JSON object.
//
//   RAG_SERVICE_URL=http://127.0.0.1:8000 RAG_CLIENT_ID=svc-... RAG_CLIENT_SECRET=... \
//   RAG_COMPANY_ID=<platform company id> [PLATFORM_TOKEN=<a platform JWT>] \
//   node clients/node/examples/platform-flow.mjs
//
// 1. an embedding, 2. index-document, 3. a search with the plan's default threshold (0.7, on the
// calibrated score), 4. with PLATFORM_TOKEN, the same search as a platform user's token.
import { PythonRAGService, RAGServiceError, clientCredentialsTokenProvider, staticTokenProvider } from '../PythonRAGService.js';

const baseUrl = process.env.RAG_SERVICE_URL ?? 'http://localhost:8001';
const companyId = process.env.RAG_COMPANY_ID;
if (!companyId || !process.env.RAG_CLIENT_ID || !process.env.RAG_CLIENT_SECRET) {
  console.error('set RAG_CLIENT_ID, RAG_CLIENT_SECRET and RAG_COMPANY_ID');
  process.exit(2);
}
const quiet = { error: () => {} };  // errors are reported in the JSON below
const service = new PythonRAGService({
  baseUrl,
  logger: quiet,
  tokenProvider: clientCredentialsTokenProvider({
    baseUrl, clientId: process.env.RAG_CLIENT_ID, clientSecret: process.env.RAG_CLIENT_SECRET,
    defaultCompanyId: companyId,
  }),
});

const question = process.env.RAG_QUESTION ?? 'How much do progressive lenses cost?';
const out = {};
const embedding = await service.generateEmbedding(question);
out.embedding = { dimensions: embedding.length, finite: embedding.every(Number.isFinite) };
out.indexed = await service.indexDocument(companyId, {
  filename: 'platform-price-list.md',
  content: process.env.RAG_DOCUMENT ?? 'Progressive lenses cost £189 a pair, including an anti-reflective coating.',
  category: 'pricing',
});
out.search = await service.searchKnowledge(question, companyId);  // the plan's defaults: limit 5, threshold 0.7
try {
  await service.searchKnowledge(question, `${companyId}-someone-else`);
  out.otherCompany = 'allowed';
} catch (error) {
  out.otherCompany = error instanceof RAGServiceError ? { status: error.status, code: error.code } : String(error);
}
if (process.env.PLATFORM_TOKEN) {
  const asUser = new PythonRAGService({ baseUrl, logger: quiet, tokenProvider: staticTokenProvider(process.env.PLATFORM_TOKEN) });
  out.platformSearch = await asUser.searchKnowledge(question, companyId);
}
console.log(JSON.stringify(out));
