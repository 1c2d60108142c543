// End-to-end test of envd alone, driven by the official, unchanged e2b SDK.
//
// With E2B_DEBUG=true the SDK skips the control plane: Sandbox.create() makes
// no API call and talks to envd at http://localhost:49983. This test starts
// envd itself (ENVD_BIN, default ../../bin/envd; build it with
// `CGO_ENABLED=0 go build -o bin/envd ./cmd/envd`) and stops it after.
// When 49983 is taken, it picks a free port and points the SDK at it with
// E2B_SANDBOX_URL.
//
//   cd tests/e2e && node --test envd.test.mjs

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

process.env.E2B_DEBUG = 'true'
process.env.E2B_API_KEY ??= 'e2b_0000000000000000000000000000000000000000'

const { Sandbox, CommandExitError, FilesystemEventType, FileType } = await import('e2b')

const here = path.dirname(fileURLToPath(import.meta.url))
const envdBin = process.env.ENVD_BIN ?? path.resolve(here, '../../bin/envd')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Polls until fn returns a truthy value or the deadline passes. */
async function eventually(fn, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

let envd
let envdLog = ''
let baseUrl
let home // HOME of the sandbox's processes, set through /init
let sbx

before(async () => {
  let port = 49983
  if (!(await portFree(port))) {
    port = await freePort()
    process.env.E2B_SANDBOX_URL = `http://localhost:${port}`
  }
  baseUrl = `http://127.0.0.1:${port}`
  envd = spawn(envdBin, ['-addr', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] })
  envd.stdout.on('data', (d) => { envdLog += d })
  envd.stderr.on('data', (d) => { envdLog += d })
  const exited = new Promise((resolve) => envd.once('exit', resolve))
  await eventually(async () => {
    if (envd.exitCode !== null) assert.fail(`envd exited (${envd.exitCode}): ${envdLog}`)
    try {
      return (await fetch(`${baseUrl}/health`)).status === 204
    } catch {
      return false
    }
  }, `envd (${envdBin}) to answer /health`)
  envd.exited = exited

  // The orchestrator calls /init on every create. Give the sandbox's
  // processes a clean HOME so that login shells don't run the test
  // machine's own profile.
  home = await mkdtemp(path.join(os.tmpdir(), 'envd-e2e-home-'))
  const res = await fetch(`${baseUrl}/init`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ envVars: { HOME: home, E2E_FROM_INIT: 'yes' } }),
  })
  assert.equal(res.status, 204, `/init: ${res.status} ${await res.text()}`)

  sbx = await Sandbox.create()
})

after(async () => {
  if (envd && envd.exitCode === null) {
    envd.kill('SIGTERM')
    let timer
    const timeout = new Promise((resolve) => { timer = setTimeout(resolve, 5000) })
    await Promise.race([envd.exited, timeout])
    clearTimeout(timer)
    if (envd.exitCode === null) {
      envd.kill('SIGKILL')
      assert.fail(`envd did not stop within 5 s of SIGTERM: ${envdLog}`)
    }
  }
  if (home) await rm(home, { recursive: true, force: true })
})

describe('commands', () => {
  test('run returns stdout and exit code 0', async () => {
    const r = await sbx.commands.run('echo hello; echo "$E2E_FROM_INIT $HOME"')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, `hello\nyes ${home}\n`)
    assert.equal(r.stderr, '')
  })

  test('run returns stderr, envs and cwd', async () => {
    const r = await sbx.commands.run('echo "$GREETING" >&2; pwd', { envs: { GREETING: 'hi' }, cwd: '/tmp' })
    assert.equal(r.stderr, 'hi\n')
    assert.equal(r.stdout, '/tmp\n')
  })

  test('callbacks see output while the command runs', async () => {
    const chunks = []
    const r = await sbx.commands.run('echo one; sleep 0.3; echo two', { onStdout: (d) => chunks.push(d) })
    assert.equal(r.stdout, 'one\ntwo\n')
    assert.deepEqual(chunks.join(''), 'one\ntwo\n')
    assert.ok(chunks.length >= 2, `got ${chunks.length} chunk(s): output was not streamed`)
  })

  test('non-zero exit throws CommandExitError', async () => {
    await assert.rejects(sbx.commands.run('echo oops >&2; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError, `got ${err}`)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stderr, 'oops\n')
      return true
    })
  })

  test('background command is listed and killed', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    assert.ok(h.pid > 0)
    const listed = await sbx.commands.list()
    const p = listed.find((x) => x.pid === h.pid)
    assert.ok(p, `pid ${h.pid} not in ${JSON.stringify(listed)}`)
    assert.equal(p.cmd, '/bin/bash')
    assert.deepEqual(p.args, ['-l', '-c', 'sleep 30'])

    assert.equal(await h.kill(), true)
    await assert.rejects(h.wait(), (err) => {
      assert.ok(err instanceof CommandExitError, `got ${err}`)
      assert.equal(err.exitCode, -1)
      assert.equal(err.error, 'signal: killed')
      return true
    })
    await eventually(async () => !(await sbx.commands.list()).some((x) => x.pid === h.pid), 'the killed command to leave the list')
    assert.equal(await sbx.commands.kill(h.pid), false)
  })

  test('connect to a running command', async () => {
    const h = await sbx.commands.run('sleep 0.5; echo late', { background: true })
    await h.disconnect()
    const again = await sbx.commands.connect(h.pid)
    const r = await again.wait()
    assert.equal(r.stdout, 'late\n')
  })

  test('stdin with sendStdin and closeStdin', async () => {
    const seen = []
    const h = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => seen.push(d) })
    await h.sendStdin('hello\n')
    await eventually(() => seen.join('') === 'hello\n', 'the echo of stdin')
    await sbx.commands.sendStdin(h.pid, 'again\n')
    await h.closeStdin()
    const r = await h.wait()
    assert.equal(r.stdout, 'hello\nagain\n')
  })

  test('without stdin the command reads EOF', async () => {
    const r = await sbx.commands.run('cat; echo done')
    assert.equal(r.stdout, 'done\n')
  })
})

describe('files', () => {
  let dir
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'envd-e2e-files-'))
  })
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  test('write one file and read it', async () => {
    const p = `${dir}/one.txt`
    const info = await sbx.files.write(p, 'hello file')
    assert.equal(info.path, p)
    assert.equal(info.name, 'one.txt')
    assert.equal(await sbx.files.read(p), 'hello file')
  })

  test('write many files', async () => {
    const infos = await sbx.files.write([
      { path: `${dir}/many/a.txt`, data: 'A' },
      { path: `${dir}/many/b.txt`, data: 'BB' },
    ])
    assert.deepEqual(infos.map((i) => i.path).sort(), [`${dir}/many/a.txt`, `${dir}/many/b.txt`])
    assert.equal(await sbx.files.read(`${dir}/many/b.txt`), 'BB')
  })

  test('list, makeDir, rename, remove, exists', async () => {
    assert.equal(await sbx.files.makeDir(`${dir}/sub`), true)
    assert.equal(await sbx.files.makeDir(`${dir}/sub`), false)
    await sbx.files.write(`${dir}/sub/x.txt`, 'x')

    const entries = await sbx.files.list(`${dir}/sub`)
    assert.deepEqual(entries.map((e) => [e.name, e.type]), [['x.txt', FileType.FILE]])
    assert.equal(entries[0].size, 1)

    const moved = await sbx.files.rename(`${dir}/sub/x.txt`, `${dir}/sub/y.txt`)
    assert.equal(moved.path, `${dir}/sub/y.txt`)
    assert.equal(await sbx.files.exists(`${dir}/sub/x.txt`), false)
    assert.equal(await sbx.files.exists(`${dir}/sub/y.txt`), true)

    await sbx.files.remove(`${dir}/sub`)
    assert.equal(await sbx.files.exists(`${dir}/sub`), false)
  })

  test('watchDir delivers events', async () => {
    const wdir = `${dir}/watched`
    await sbx.files.makeDir(wdir)
    const events = []
    const handle = await sbx.files.watchDir(wdir, (e) => events.push(e))
    try {
      await sbx.files.write(`${wdir}/new.txt`, 'data')
      await eventually(
        () => events.some((e) => e.name === 'new.txt' && [FilesystemEventType.CREATE, FilesystemEventType.WRITE].includes(e.type)),
        'a create/write event for new.txt',
      )
      await sbx.files.remove(`${wdir}/new.txt`)
      await eventually(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.REMOVE), 'a remove event')
    } finally {
      await handle.stop()
    }
  })
})

describe('pty', () => {
  test('create, sendInput, resize, kill', async () => {
    let out = ''
    const dec = new TextDecoder()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += dec.decode(d, { stream: true }) } })
    assert.ok(h.pid > 0)
    const enc = new TextEncoder()

    await sbx.pty.sendInput(h.pid, enc.encode('tty; stty size\n'))
    await eventually(() => /\/dev\/pts\/\d+/.test(out) && out.includes('24 80'), `tty and size in ${JSON.stringify(out)}`)

    await sbx.pty.resize(h.pid, { cols: 100, rows: 40 })
    await sbx.pty.sendInput(h.pid, enc.encode('stty size\n'))
    await eventually(() => out.includes('40 100'), `the new size in ${JSON.stringify(out)}`)

    assert.equal(await sbx.pty.kill(h.pid), true)
    const r = await h.wait().catch((err) => err)
    assert.equal(r.exitCode, -1)
    assert.equal(await sbx.pty.kill(h.pid), false)
  })
})
