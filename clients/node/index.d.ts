import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';

export interface WithTenantOptions {
  /** End user id (uuid) for `multitenancy.user_id` in this transaction; tenant_set then refuses
   *  (28000) a tenant the user is not a member of. */
  user?: string | null;
}

/**
 * What `fn` gets: not the pooled client but a wrapper bound to one `withTenant` call. `query()`
 * takes every form of node-postgres' `client.query` (text and values, a query config object,
 * a submittable, a callback) while the transaction is open; once `fn` has settled it is refused
 * (the promise rejects, or the callback gets an Error) and never runs on the pooled client, which
 * may already serve another request. `release()` always throws: `withTenant` releases the client.
 */
export interface TenantClient {
  query: PoolClient['query'];
  escapeIdentifier: PoolClient['escapeIdentifier'];
  escapeLiteral: PoolClient['escapeLiteral'];
  release(): never;
}

/**
 * Run `fn(client)` in one transaction whose tenant context is `tenant` (slug or uuid):
 * BEGIN, `SELECT multitenancy.tenant_set($1)`, `await fn(client)`, COMMIT. Any error rolls back
 * and is rethrown; a client whose ROLLBACK fails is released with the error (the pool destroys
 * it). `client` is a {@link TenantClient}: await every query before `fn` returns (a later one is
 * refused); do not release it (that throws). A client the pool hands out inside a transaction
 * (released by other code without COMMIT/ROLLBACK) is destroyed and another one taken.
 */
export function withTenant<T>(
  pool: Pool,
  tenant: string,
  fn: (client: TenantClient) => Promise<T>,
  options?: WithTenantOptions
): Promise<T>;

/** One statement in its own transaction for `tenant`. */
export function tenantQuery<R extends QueryResultRow = any>(
  pool: Pool,
  tenant: string,
  text: string,
  values?: unknown[],
  options?: WithTenantOptions
): Promise<QueryResult<R>>;

/** COMMIT was answered with ROLLBACK (the transaction had failed inside `fn`); nothing was committed. */
export class TransactionRolledBackError extends Error {
  readonly code: '40000';
}
