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
 * `client` is not the pooled client but a wrapper bound to this call: its `query()` (same forms as
 * node-postgres') runs on the pooled client only until `fn` settles and is refused (an Error)
 * afterwards, and its `release()` always throws — withTenant releases the pooled client itself.
 * A client that the pool hands out inside a transaction (other code released it without COMMIT or
 * ROLLBACK) is destroyed and another one taken.
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
 * @param {(client: TenantClient) => Promise<any>} fn
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

  const client = await checkoutIdle(pool);
  // A checked-out client has no 'error' listener of the pool's: if the server ends the connection
  // between two queries (pg_terminate_backend, restart, network), node-postgres emits 'error', and
  // an 'error' event nobody listens to crashes the process. Keep it; the next query fails anyway.
  let connectionError;
  const onError = (err) => {
    if (connectionError === undefined) connectionError = err;
  };
  client.on('error', onError);
  let destroyWith; // set when the connection must not go back to the pool
  const scope = { open: false };
  try {
    await client.query('BEGIN');
    if (user !== undefined && user !== null) {
      await client.query(USER_SET, [user]);
    }
    await client.query(TENANT_SET, [tenant]);
    scope.open = true;
    let result;
    try {
      result = await fn(scopedClient(client, scope, tenant));
    } finally {
      // From here on the client is withTenant's again (and soon the pool's): a query that fn's code
      // starts later (timer, event handler, un-awaited chain) is refused, never run on it.
      scope.open = false;
    }
    if (transactionStatus(client) === 'E') {
      // The transaction failed inside fn (an error was caught): the catch below rolls it back.
      throw new TransactionRolledBackError(tenant);
    }
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

/** How many dirty clients checkoutIdle destroys before it gives up. */
const MAX_DIRTY_CHECKOUTS = 10;

/**
 * The transaction status node-postgres recorded from the server's last ReadyForQuery: 'I' idle,
 * 'T' in a transaction block, 'E' in a failed one; undefined when the client cannot tell.
 */
function transactionStatus(client) {
  if (typeof client.getTransactionStatus === 'function') {
    const status = client.getTransactionStatus();
    return status == null ? undefined : status;
  }
  return undefined;
}

/**
 * pool.connect(), but never a client inside a transaction: other code may have released a client
 * in the middle of its own transaction, and a BEGIN there is only a warning (25001) — our COMMIT
 * would commit that abandoned work too. Such a client is released with an error (the pool destroys
 * it, which rolls its transaction back) and another one is taken.
 */
async function checkoutIdle(pool) {
  for (let attempt = 0; ; attempt++) {
    const client = await pool.connect();
    const status = transactionStatus(client);
    if (status === undefined || status === 'I') return client;
    const err = new Error(
      `withTenant: the pool handed out a client inside a transaction (status ${JSON.stringify(status)}): ` +
        'some code released a client without COMMIT or ROLLBACK; the connection was destroyed'
    );
    client.release(err);
    if (attempt + 1 >= MAX_DIRTY_CHECKOUTS) throw err;
  }
}

/**
 * What fn gets instead of the pooled client: query() (every form of node-postgres' client.query)
 * while withTenant's transaction is open, refused afterwards; release() always refused.
 */
function scopedClient(client, scope, tenant) {
  const finished = () =>
    new Error(
      `withTenant: the transaction for tenant ${JSON.stringify(tenant)} has finished; this client may ` +
        'already serve another request. Await every query inside fn.'
    );
  return Object.freeze({
    query(...args) {
      if (!scope.open) {
        const err = finished();
        const callback = args.length > 0 ? args[args.length - 1] : undefined;
        if (typeof callback === 'function') {
          process.nextTick(callback, err);
          return undefined;
        }
        if (args[0] && typeof args[0].callback === 'function') {
          process.nextTick(args[0].callback, err);
          return undefined;
        }
        return Promise.reject(err);
      }
      return client.query(...args);
    },
    release() {
      throw new Error('withTenant: do not release the client inside fn; withTenant releases it when fn is done');
    },
    escapeIdentifier(str) {
      return client.escapeIdentifier(str);
    },
    escapeLiteral(str) {
      return client.escapeLiteral(str);
    },
  });
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
