// Restart of `cocoon server` with N sandboxes on the node (issue 20):
// creates N sandboxes, kill -9s the server, starts it again with the same
// command line and reports the ms until /health answers, until the list
// answers with all N running, and until each of them runs a command.
// Then it kills the runtime of one sandbox and reports the ms until a
// command in flight in it fails, and kills the rest.
//
//   cd tests/e2e && COCOON_E2E_DATA_DIR=<data dir> COCOON_E2E_RUNTIME=gvisor \
//     COCOON_E2E_PID_FILE=<data dir>/server.pid COCOON_E2E_SERVER_LOG=<data dir>/server.log \
//     COCOON_E2E_SERVER_ARGS='["bin/cocoon","server",...]' node bench-restart.mjs 50
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { config, api, killServer, startServer, alive, sleep } from './lib/server.mjs'

const { Sandbox } = await import('e2b')
const cfg = config()
const n = Number(process.argv[2] ?? 50)
const tag = { suite: `bench-restart-${Date.now()}` }

const ids = []
for (let i = 0; i < n; i += 4) {
  const batch = await Promise.all(Array.from({ length: Math.min(4, n - i) }, () =>
    Sandbox.create('base', { timeoutMs: 3_600_000, requestTimeoutMs: 120_000, metadata: tag })))
  ids.push(...batch.map((s) => s.sandboxId))
}
console.log(`created ${ids.length} sandboxes`)

async function until(what, fn) {
  const t0 = Date.now()
  for (;;) {
    try { if (await fn()) return Date.now() - t0 } catch {}
    if (Date.now() - t0 > 300_000) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

await killServer(cfg)
const pid = await startServer(cfg)
const t0 = Date.now()
const health = await until('health', async () => {
  if (!alive(pid)) throw new Error('the restarted server exited')
  return (await api(cfg, 'GET', '/health')).status === 200
})
const list = await until('list', async () => {
  const r = await api(cfg, 'GET', `/v2/sandboxes?metadata=suite%3D${tag.suite}&limit=100`)
  return r.status === 200 && r.json.filter((s) => s.state === 'running').length === n
})
const answered = new Set()
const all = await until('all run a command', async () => {
  await Promise.all(ids.filter((id) => !answered.has(id)).map(async (id) => {
    await (await Sandbox.connect(id)).commands.run('true', { requestTimeoutMs: 30_000 })
    answered.add(id)
  }).map((p) => p.catch(() => {})))
  return answered.size === ids.length
})

console.log(`restart with ${n} sandboxes: /health after ${health} ms, list of ${n} running after ${health + list} ms, all ${n} answering after ${health + list + all} ms (from the start of the new process)`)

// A dead sandbox: the call in flight fails.
const victim = await Sandbox.connect(ids[0])
const rec = JSON.parse(readFileSync(path.join(cfg.dataDir, 'node', 'sandboxes', `${ids[0]}.json`), 'utf8'))
const dir = path.join(cfg.dataDir, 'sandboxes', rec.runtimeID || ids[0])
const rpid = Number(readFileSync(path.join(dir, cfg.runtime === 'gvisor' ? 'sandbox.pid' : 'qemu.pid'), 'utf8'))
const inflight = victim.commands.run('sleep 600', { timeoutMs: 0, requestTimeoutMs: 0 }).catch((e) => e)
await until('the command to run', async () => (await victim.commands.list()).some((p) => p.args?.some((a) => a.includes('sleep 600'))))
const tk = Date.now()
process.kill(rpid, 'SIGKILL')
const err = await inflight
console.log(`dead sandbox -> SDK error in flight after ${Date.now() - tk} ms: ${String(err).slice(0, 120)}`)

await Promise.all(ids.map((id) => Sandbox.kill(id).catch(() => {})))
console.log(`killed ${ids.length} sandboxes (${Date.now() - t0} ms after the restart)`)
