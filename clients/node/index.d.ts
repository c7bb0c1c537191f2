import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';

export interface WithTenantOptions {
  /** End user id (uuid) for `multitenancy.user_id` in this transaction; tenant_set then refuses
   *  (28000) a tenant the user is not a member of. */
  user?: string | null;
}

/**
 * Run `fn(client)` in one transaction whose tenant context is `tenant` (slug or uuid):
 * BEGIN, `SELECT multitenancy.tenant_set($1)`, `await fn(client)`, COMMIT. Any error rolls back
 * and is rethrown; a client whose ROLLBACK fails is released with the error (the pool destroys
 * it). Do not release the client inside `fn`, and await every query before `fn` returns.
 */
export function withTenant<T>(
  pool: Pool,
  tenant: string,
  fn: (client: PoolClient) => Promise<T>,
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
