'use strict';
// Tests of withTenant/tenantQuery against a real PostgreSQL server with the multitenancy
// extension. pgrx-tests/tests/client_node.rs prepares the database and runs them:
//   MT_TEST_APP_URL        connection URL of the application role (non-superuser, NOBYPASSRLS)
//   MT_TEST_SUPERUSER_URL  connection URL of a superuser (ground truth, pg_terminate_backend)
//   MT_TEST_TENANT_A_ID    id of tenant "acme"   (rows 'acme-item-*' in orders)
//   MT_TEST_TENANT_B_ID    id of tenant "globex" (rows 'globex-item-*' in orders)
// Without them every test fails (none is skipped).
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Pool, Client } = require('pg');
const { withTenant, tenantQuery, TransactionRolledBackError } = require('..');

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through pgrx-tests/tests/client_node.rs`);
  }
  return value;
}

const A = { slug: 'acme', id: () => env('MT_TEST_TENANT_A_ID') };
const B = { slug: 'globex', id: () => env('MT_TEST_TENANT_B_ID') };

const pools = [];
function appPool(max) {
  const pool = new Pool({ connectionString: env('MT_TEST_APP_URL'), max });
  // Errors of idle clients (the server ended them) must not crash the test process.
  pool.on('error', () => {});
  pools.push(pool);
  return pool;
}

let su;
async function superuser() {
  if (!su) {
    su = new Client({ connectionString: env('MT_TEST_SUPERUSER_URL') });
    await su.connect();
  }
  return su;
}

/** Ground truth (superuser, no RLS): items of a tenant, ordered. */
async function trueItems(tenantId) {
  const c = await superuser();
  const { rows } = await c.query('SELECT item FROM orders WHERE tenant_id = $1 ORDER BY item', [tenantId]);
  return rows.map((r) => r.item);
}

function sqlstate(code) {
  return (err) => {
    assert.equal(err.code, code, `expected SQLSTATE ${code}, got ${err.code}: ${err.message}`);
    return true;
  };
}

/** A pool whose clients count their release() calls (and keep the arguments). */
function countingPool(pool, releases) {
  return {
    async connect() {
      const client = await pool.connect();
      const release = client.release;
      client.release = (err) => {
        releases.push(err);
        return release(err);
      };
      return client;
    },
  };
}

after(async () => {
  await Promise.all(pools.map((p) => p.end()));
  if (su) await su.end();
});

test('isolation: tenant A sees exactly its own rows, none of B (which exist by ground truth)', async () => {
  const pool = appPool(2);
  const ownA = await trueItems(A.id());
  const ownB = await trueItems(B.id());
  assert.ok(ownA.length > 0 && ownB.length > 0, 'ground truth: both tenants have rows');

  const seenA = await withTenant(pool, A.slug, async (c) => {
    const { rows } = await c.query('SELECT item, tenant_id FROM orders ORDER BY item');
    const other = await c.query('SELECT count(*)::int AS n FROM orders WHERE tenant_id = $1', [B.id()]);
    assert.equal(other.rows[0].n, 0, "B's rows are not visible to A even by tenant_id");
    assert.ok(rows.every((r) => r.tenant_id === A.id()));
    return rows.map((r) => r.item);
  });
  assert.deepEqual(seenA, ownA);

  // By uuid as well as by slug, and tenantQuery.
  const seenB = await tenantQuery(pool, B.id(), 'SELECT item FROM orders ORDER BY item');
  assert.deepEqual(seenB.rows.map((r) => r.item), ownB);
  assert.equal(
    (await tenantQuery(pool, B.slug, 'SELECT multitenancy.current_tenant_id()::text AS t')).rows[0].t,
    B.id()
  );
});

test('a forgotten tenant (plain pool.query) gets 28000, never rows', async () => {
  const pool = appPool(2);
  await assert.rejects(pool.query('SELECT item FROM orders'), sqlstate('28000'));
  // tenant_set outside a transaction block is refused too (25P01).
  await assert.rejects(pool.query('SELECT multitenancy.tenant_set($1)', [A.slug]), sqlstate('25P01'));
});

test('the anti-pattern pool.query("SET multitenancy.tenant_id = ...") fails closed', async () => {
  // One connection, so the SELECT surely runs on the connection that ran the SET.
  const pool = appPool(1);
  // The SET itself is accepted: it is its own (autocommit) transaction, and the value counts
  // only in the transaction that set it.
  await pool.query(`SET multitenancy.tenant_id = '${A.id()}'`);
  await assert.rejects(pool.query('SELECT item FROM orders'), (err) => {
    sqlstate('28000')(err);
    assert.match(err.message, /earlier transaction/, 'the message says why');
    return true;
  });
  await assert.rejects(pool.query('SELECT count(*) FROM orders'), sqlstate('28000'));
  // And withTenant on that same connection still works, for the tenant it names.
  const items = await withTenant(pool, B.slug, async (c) => (await c.query('SELECT item FROM orders ORDER BY item')).rows);
  assert.deepEqual(items.map((r) => r.item), await trueItems(B.id()));
});

test('an exception inside fn rolls back (nothing committed), the client is reused, the next call works', async () => {
  const pool = appPool(1);
  const releases = [];
  const counted = countingPool(pool, releases);
  const boom = new Error('boom inside fn');
  let pid;
  await assert.rejects(
    withTenant(counted, A.slug, async (c) => {
      pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await c.query("INSERT INTO orders (item) VALUES ('rolled-back-by-exception')");
      throw boom;
    }),
    (err) => err === boom
  );
  assert.deepEqual(releases, [undefined], 'released once, to be reused');
  const c = await superuser();
  const left = await c.query("SELECT count(*)::int AS n FROM orders WHERE item = 'rolled-back-by-exception'");
  assert.equal(left.rows[0].n, 0, 'ground truth: the INSERT was rolled back');

  // The same (single) connection, now for B: no leftover of A's transaction.
  const next = await withTenant(counted, B.slug, async (c) => {
    const { rows } = await c.query('SELECT pg_backend_pid() AS pid, multitenancy.current_tenant_id()::text AS t');
    return rows[0];
  });
  assert.equal(next.pid, pid, 'the client was reused');
  assert.equal(next.t, B.id());
  assert.deepEqual(releases, [undefined, undefined]);

  // A committed write is there.
  await withTenant(counted, A.slug, (c) => c.query("INSERT INTO orders (item) VALUES ('acme-committed')"));
  assert.ok((await trueItems(A.id())).includes('acme-committed'));
  await c.query("DELETE FROM orders WHERE item = 'acme-committed'");
});

test('an error caught inside fn: COMMIT rolls back, withTenant rejects, nothing committed', async () => {
  const pool = appPool(1);
  await assert.rejects(
    withTenant(pool, A.slug, async (c) => {
      await c.query("INSERT INTO orders (item) VALUES ('rolled-back-by-commit')");
      await c.query('SELECT 1/0').catch(() => {}); // swallowed: the transaction is aborted
      return 'looks fine';
    }),
    (err) => err instanceof TransactionRolledBackError && err.code === '40000'
  );
  const c = await superuser();
  const left = await c.query("SELECT count(*)::int AS n FROM orders WHERE item = 'rolled-back-by-commit'");
  assert.equal(left.rows[0].n, 0);
  assert.equal((await tenantQuery(pool, A.slug, 'SELECT 1 AS one')).rows[0].one, 1);
});

test('a transaction cannot switch tenants: tenant_set of another tenant inside fn is 28000', async () => {
  const pool = appPool(1);
  await assert.rejects(
    withTenant(pool, A.slug, async (c) => {
      await c.query('SELECT count(*) FROM orders');
      await c.query('SELECT multitenancy.tenant_set($1)', [B.slug]);
    }),
    sqlstate('28000')
  );
  assert.equal((await tenantQuery(pool, B.slug, 'SELECT count(*)::int AS n FROM orders')).rows[0].n, (await trueItems(B.id())).length);
});

test('unknown tenant and bad arguments are refused before any work', async () => {
  const pool = appPool(1);
  let ran = false;
  await assert.rejects(
    withTenant(pool, 'no-such-tenant', async () => {
      ran = true;
    }),
    sqlstate('42704')
  );
  assert.equal(ran, false);
  await assert.rejects(withTenant(pool, '', async () => {}), TypeError);
  await assert.rejects(withTenant(pool, undefined, async () => {}), TypeError);
  await assert.rejects(withTenant(pool, A.slug, 'not a function'), TypeError);
  assert.equal(pool.totalCount, 1, 'the refused tenant_set left the client in the pool');
});

test('options.user: a member may act for its tenant, not for another (28000)', async () => {
  const pool = appPool(1);
  const c = await superuser();
  const user = (await c.query('SELECT gen_random_uuid()::text AS u')).rows[0].u;
  await c.query("SELECT multitenancy.member_add('acme', $1::uuid, 'member')", [user]);
  const seen = await withTenant(
    pool,
    A.slug,
    async (client) => (await client.query('SELECT multitenancy.current_user_id()::text AS u')).rows[0].u,
    { user }
  );
  assert.equal(seen, user);
  await assert.rejects(withTenant(pool, B.slug, async () => {}, { user }), sqlstate('28000'));
});

async function terminate(pid) {
  const c = await superuser();
  const { rows } = await c.query('SELECT pg_terminate_backend($1) AS ok', [pid]);
  assert.equal(rows[0].ok, true, 'pg_terminate_backend');
  // Wait until the backend is gone, so the next statement surely meets a closed connection.
  for (let i = 0; i < 200; i++) {
    const r = await c.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (r.rows[0].n === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`backend ${pid} still there after pg_terminate_backend`);
}

test('a failing ROLLBACK destroys the client (backend killed inside fn, fn throws)', async () => {
  const pool = appPool(5);
  const releases = [];
  const counted = countingPool(pool, releases);
  const boom = new Error('fn failed after its backend was killed');
  let pid;
  await assert.rejects(
    withTenant(counted, A.slug, async (c) => {
      pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await c.query("INSERT INTO orders (item) VALUES ('rolled-back-by-kill')");
      await terminate(pid);
      throw boom;
    }),
    (err) => err === boom,
    "withTenant rethrows fn's error, not the ROLLBACK's"
  );
  assert.equal(releases.length, 1, 'released exactly once');
  assert.ok(releases[0] instanceof Error, 'released with an error, so the pool destroys it');
  assert.equal(pool.totalCount, 0, 'the pool no longer holds the dead client');

  const next = await withTenant(counted, A.slug, async (c) => (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
  assert.notEqual(next, pid, 'the next request got a new connection');
  assert.equal(pool.totalCount, 1);
  assert.equal(releases.length, 2);
  assert.equal(releases[1], undefined);
  const c = await superuser();
  const left = await c.query("SELECT count(*)::int AS n FROM orders WHERE item = 'rolled-back-by-kill'");
  assert.equal(left.rows[0].n, 0, 'ground truth: nothing of the killed transaction was committed');
});

test('a failing COMMIT and ROLLBACK destroy the client (backend killed inside fn, fn returns)', async () => {
  const pool = appPool(5);
  const releases = [];
  const counted = countingPool(pool, releases);
  let pid;
  await assert.rejects(
    withTenant(counted, B.slug, async (c) => {
      pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await c.query("INSERT INTO orders (item) VALUES ('lost-with-commit')");
      await terminate(pid);
      return 'fn thinks all is well';
    }),
    (err) => err instanceof Error,
    'the COMMIT on a dead connection rejects'
  );
  assert.equal(releases.length, 1);
  assert.ok(releases[0] instanceof Error);
  assert.equal(pool.totalCount, 0);
  const items = await tenantQuery(counted, B.slug, 'SELECT item FROM orders ORDER BY item');
  assert.deepEqual(items.rows.map((r) => r.item), await trueItems(B.id()));
  assert.ok(!items.rows.some((r) => r.item === 'lost-with-commit'));
});

test('concurrency: pool of 5, 400 interleaved withTenant calls of 2 tenants never see foreign rows', async () => {
  const pool = appPool(5);
  const truth = { [A.slug]: await trueItems(A.id()), [B.slug]: await trueItems(B.id()) };
  const ids = { [A.slug]: A.id(), [B.slug]: B.id() };
  const pids = new Set();
  const calls = [];
  for (let i = 0; i < 400; i++) {
    const tenant = i % 2 === 0 ? A.slug : B.slug;
    calls.push(
      withTenant(pool, tenant, async (c) => {
        const first = await c.query('SELECT pg_backend_pid() AS pid, multitenancy.current_tenant_id()::text AS t');
        pids.add(first.rows[0].pid);
        // Yield to the event loop so that the calls of both tenants interleave on the 5 connections.
        await new Promise((resolve) => setImmediate(resolve));
        const { rows } = await c.query('SELECT item, tenant_id FROM orders ORDER BY item');
        if (i % 20 < 2) {
          await c.query('INSERT INTO orders (item) VALUES ($1)', [`${tenant}-concurrent-${i}`]);
        }
        return { tenant, t: first.rows[0].t, rows };
      })
    );
  }
  const results = await Promise.all(calls);
  assert.equal(results.length, 400);
  for (const { tenant, t, rows } of results) {
    assert.equal(t, ids[tenant], 'the context is the tenant asked for');
    for (const r of rows) {
      assert.equal(r.tenant_id, ids[tenant], `a row of another tenant leaked into ${tenant}: ${r.item}`);
      assert.ok(r.item.startsWith(`${tenant}-`), `${tenant} saw ${r.item}`);
    }
    const seed = rows.map((r) => r.item).filter((item) => !item.includes('-concurrent-'));
    assert.deepEqual(seed, truth[tenant]);
  }
  assert.ok(pids.size > 1 && pids.size <= 5, `the calls shared the pool's connections (${pids.size})`);
  assert.equal(pool.totalCount, pids.size);
  // Ground truth: the 40 inserts landed in the tenant that made them.
  const c = await superuser();
  const { rows } = await c.query(
    `SELECT count(*) FILTER (WHERE item LIKE 'acme-concurrent-%' AND tenant_id = $1)::int AS a,
            count(*) FILTER (WHERE item LIKE 'globex-concurrent-%' AND tenant_id = $2)::int AS b,
            count(*) FILTER (WHERE item LIKE '%-concurrent-%')::int AS total
       FROM orders`,
    [A.id(), B.id()]
  );
  assert.deepEqual(rows[0], { a: 20, b: 20, total: 40 });
  await c.query("DELETE FROM orders WHERE item LIKE '%-concurrent-%'");
});

test('a late query of fn (after withTenant resolved) is refused, never runs in the next request', async () => {
  // One connection: the next withTenant (globex) surely holds the connection acme's fn used.
  const pool = appPool(1);
  let leaked;
  const pidA = await withTenant(pool, A.slug, async (c) => {
    leaked = c;
    return (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  });
  const refused = (err) => {
    assert.ok(!(err && err.rows), 'no rows');
    assert.match(err.message, /has finished/);
    return true;
  };
  const seenB = await withTenant(pool, B.slug, async (c) => {
    const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    assert.equal(pid, pidA, 'the same connection now serves globex');
    // acme's code, late (timer, event handler): a text query, a query config object, a callback.
    await assert.rejects(leaked.query('SELECT item, tenant_id FROM orders ORDER BY item'), refused);
    await assert.rejects(leaked.query({ text: 'SELECT item FROM orders WHERE tenant_id <> $1', values: [A.id()] }), refused);
    await new Promise((resolve) => {
      leaked.query('SELECT item FROM orders', (err, res) => {
        refused(err);
        assert.equal(res, undefined);
        resolve();
      });
    });
    return (await c.query('SELECT item FROM orders ORDER BY item')).rows.map((r) => r.item);
  });
  assert.deepEqual(seenB, await trueItems(B.id()), "globex's own transaction was not disturbed");
  await assert.rejects(leaked.query('SELECT 1'), refused);
  assert.throws(() => leaked.release(), /do not release/);
});

test('client.release() inside fn throws; withTenant rolls back and releases exactly once', async () => {
  const pool = appPool(1);
  const releases = [];
  const counted = countingPool(pool, releases);
  await assert.rejects(
    withTenant(counted, A.slug, async (c) => {
      await c.query("INSERT INTO orders (item) VALUES ('released-inside-fn')");
      c.release();
      await c.query("INSERT INTO orders (item) VALUES ('after-release-inside-fn')");
    }),
    (err) => {
      assert.match(err.message, /do not release the client inside fn/, `got: ${err.message}`);
      return true;
    }
  );
  assert.deepEqual(releases, [undefined], 'released once (by withTenant), to be reused');
  const c = await superuser();
  const left = await c.query("SELECT count(*)::int AS n FROM orders WHERE item LIKE '%release%-inside-fn'");
  assert.equal(left.rows[0].n, 0, 'ground truth: rolled back');
  assert.equal(pool.idleCount, 1);
  assert.equal((await tenantQuery(counted, B.slug, 'SELECT count(*)::int AS n FROM orders')).rows[0].n, (await trueItems(B.id())).length);
});

test('a client released inside an open transaction is not used: its pending INSERT is never committed', async () => {
  const pool = appPool(1);
  const releases = [];
  const counted = countingPool(pool, releases);
  // Other code: BEGIN by hand, an INSERT for acme, and release() without COMMIT or ROLLBACK.
  const dirty = await pool.connect();
  await dirty.query('BEGIN');
  await dirty.query('SELECT multitenancy.tenant_set($1)', [A.slug]);
  await dirty.query("INSERT INTO orders (item) VALUES ('abandoned-insert')");
  const dirtyPid = (await dirty.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  dirty.release();
  assert.equal(pool.idleCount, 1, 'the dirty client is back in the pool');

  const seen = await withTenant(counted, A.slug, async (c) => {
    const { rows } = await c.query(
      "SELECT pg_backend_pid() AS pid, count(*) FILTER (WHERE item = 'abandoned-insert')::int AS n FROM orders"
    );
    return rows[0];
  });
  const c = await superuser();
  const left = await c.query("SELECT count(*)::int AS n FROM orders WHERE item = 'abandoned-insert'");
  assert.equal(left.rows[0].n, 0, 'ground truth: the abandoned INSERT was not committed');
  assert.notEqual(seen.pid, dirtyPid, 'fn ran on another (clean) connection');
  assert.equal(seen.n, 0, "fn did not see the abandoned transaction's row");
  assert.equal(releases.length, 2, 'the dirty client and the clean one');
  assert.ok(releases[0] instanceof Error, 'the dirty client was released with an error (destroyed)');
  assert.match(releases[0].message, /inside a transaction/);
  assert.equal(releases[1], undefined);
  assert.equal(pool.totalCount, 1);
});
