'use strict';
// multitenancy-pg: run work for one tenant in one transaction on a node-postgres pool.
//
// The multitenancy extension keeps a tenant context for one transaction only
// (`multitenancy.tenant_set` refuses to run outside a transaction block, a session-level SET is
// ignored by the next transaction, and a transaction that acted for one tenant cannot switch to
// another). So every request for a tenant is: check out a client, BEGIN, tenant_set, the work,
// COMMIT — and on any error ROLLBACK. A client whose ROLLBACK fails (broken connection, or an
// error) is handed back with that error so that the pool destroys it instead of reusing it.
//
// This module does not load `pg` itself: it works on the pool (or anything with `connect()`
// returning a node-postgres client with `query()` and `release()`) that the application made.

const TENANT_SET = 'SELECT multitenancy.tenant_set($1)';
const USER_SET = "SELECT set_config('multitenancy.user_id', $1, true)";

/**
 * Run `fn(client)` in one transaction whose tenant context is `tenant` (slug or uuid).
 *
 * BEGIN; [set_config('multitenancy.user_id', user, true);] SELECT multitenancy.tenant_set(tenant);
 * await fn(client); COMMIT. Resolves to what `fn` resolved to.
 *
 * On any error (BEGIN, tenant_set, fn, COMMIT) the transaction is rolled back and the error is
 * rethrown. If the ROLLBACK itself fails, the client is released with that error, so the pool
 * destroys the connection. A COMMIT that the server answers with ROLLBACK (the transaction had
 * failed, e.g. `fn` caught a query error and carried on) rejects with a TransactionRolledBackError:
 * nothing was committed. The client is released exactly once, in every case.
 *
 * @param {import('pg').Pool} pool
 * @param {string} tenant  slug or uuid of the tenant
 * @param {(client: import('pg').PoolClient) => Promise<any>} fn
 * @param {{user?: string}} [options]  user: end user id (uuid) for `multitenancy.user_id`;
 *   tenant_set then refuses (28000) a tenant the user is not a member of
 */
async function withTenant(pool, tenant, fn, options) {
  if (!pool || typeof pool.connect !== 'function') {
    throw new TypeError('withTenant: the first argument must be a pg Pool (something with connect())');
  }
  if (typeof tenant !== 'string' || tenant.length === 0) {
    throw new TypeError('withTenant: tenant must be a non-empty string (slug or uuid)');
  }
  if (typeof fn !== 'function') {
    throw new TypeError('withTenant: fn must be a function (client) => Promise');
  }
  const user = options == null ? undefined : options.user;
  if (user !== undefined && user !== null && (typeof user !== 'string' || user.length === 0)) {
    throw new TypeError('withTenant: options.user must be a non-empty string (uuid) when given');
  }

  const client = await pool.connect();
  // A checked-out client has no 'error' listener of the pool's: if the server ends the connection
  // between two queries (pg_terminate_backend, restart, network), node-postgres emits 'error', and
  // an 'error' event nobody listens to crashes the process. Keep it; the next query fails anyway.
  let connectionError;
  const onError = (err) => {
    if (connectionError === undefined) connectionError = err;
  };
  client.on('error', onError);
  let destroyWith; // set when the connection must not go back to the pool
  try {
    await client.query('BEGIN');
    if (user !== undefined && user !== null) {
      await client.query(USER_SET, [user]);
    }
    await client.query(TENANT_SET, [tenant]);
    const result = await fn(client);
    const commit = await client.query('COMMIT');
    if (commit && commit.command === 'ROLLBACK') {
      throw new TransactionRolledBackError(tenant);
    }
    return result;
  } catch (err) {
    try {
      // Also after a failed BEGIN or COMMIT: outside a transaction, ROLLBACK is only a warning.
      await client.query('ROLLBACK');
    } catch (rollbackError) {
      destroyWith = rollbackError;
    }
    throw err;
  } finally {
    if (destroyWith === undefined && connectionError !== undefined) destroyWith = connectionError;
    client.removeListener('error', onError);
    if (destroyWith !== undefined) {
      // A truthy argument makes pg-pool remove and end the client instead of reusing it.
      client.release(destroyWith instanceof Error ? destroyWith : new Error(String(destroyWith)));
    } else {
      client.release();
    }
  }
}

/**
 * One statement in its own transaction for `tenant`: `withTenant(pool, tenant, c => c.query(text, values))`.
 * Resolves to node-postgres' result.
 */
function tenantQuery(pool, tenant, text, values, options) {
  return withTenant(pool, tenant, (client) => client.query(text, values), options);
}

/** COMMIT was answered with ROLLBACK: the transaction had already failed, nothing was committed. */
class TransactionRolledBackError extends Error {
  constructor(tenant) {
    super(
      `the transaction for tenant ${JSON.stringify(tenant)} had failed (an error inside fn was caught ` +
        'and not rethrown?): COMMIT rolled it back, nothing was committed'
    );
    this.name = 'TransactionRolledBackError';
    this.code = '40000'; // transaction_rollback
  }
}

module.exports = { withTenant, tenantQuery, TransactionRolledBackError };
