// End-to-end test of custom templates, driven by the official, unchanged e2b
// SDK's Template builder against a running `cocoon server`:
//
//   source <data-dir>/sdk.env && node --test tests/e2e/template.test.mjs
//
// Template().fromTemplate('base').runCmd().copy().setEnvs().setWorkdir()
// .setStartCmd(cmd, readyCmd) → Template.build → Sandbox.create from it; a
// rebuild with unchanged steps hits the cache (and is timed); a failing RUN
// and a ready command that never succeeds end the build with an error.

import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'

const { Sandbox, Template, BuildError } = await import('e2b')

const T = { timeout: 600_000 }
const run = randomBytes(3).toString('hex')
const ctxDir = mkdtempSync(join(tmpdir(), 'cocoon-tpl-'))
writeFileSync(join(ctxDir, 'hello.txt'), `hello from ${run}\n`)
const sandboxes = []

after(async () => {
  for (const s of sandboxes) await s.kill().catch(() => {})
  rmSync(ctxDir, { recursive: true, force: true })
})

function fiveSteps(name) {
  return Template({ fileContextPath: ctxDir })
    .fromTemplate('base')
    .runCmd(`echo tool-${run} > /usr/local/bin/mytool-out && printf '#!/bin/sh\\ncat /usr/local/bin/mytool-out\\n' > /usr/local/bin/mytool && chmod +x /usr/local/bin/mytool`, { user: 'root' })
    .copy('hello.txt', '/home/user/app/hello.txt')
    .setEnvs({ COCOON_TPL: run, GREETING: 'hi there' })
    .setWorkdir('/home/user/app')
    .runCmd('pwd > where.txt && echo "$COCOON_TPL" > env.txt')
    .setStartCmd('python3 -m http.server 8765 --directory /home/user/app', 'curl -sf http://127.0.0.1:8765/hello.txt >/dev/null || python3 -c "import urllib.request;urllib.request.urlopen(\'http://127.0.0.1:8765/hello.txt\')"')
}

async function build(tpl, name) {
  const logs = []
  const t0 = Date.now()
  const info = await Template.build(tpl, name, { onBuildLogs: (e) => logs.push(e.message) })
  return { info, logs, ms: Date.now() - t0 }
}

describe('custom templates (SDK Template builder)', () => {
  const name = `tpl-${run}`
  let first

  test('build from base with RUN, COPY, ENV, WORKDIR and a start command', T, async () => {
    first = await build(fiveSteps(name), name)
    console.log(`# first build: ${first.ms} ms, ${first.logs.length} log lines`)
    assert.ok(first.info.templateId)
    assert.ok(first.logs.some((l) => l.includes('[1/5] RUN')), 'step logs are streamed')
  })

  test('a sandbox from the template has the file, env, tool and start process', T, async () => {
    const sbx = await Sandbox.create(name, { timeoutMs: 120_000 })
    sandboxes.push(sbx)
    const file = await sbx.files.read('/home/user/app/hello.txt')
    assert.equal(file, `hello from ${run}\n`)
    const env = await sbx.commands.run('echo "$COCOON_TPL|$GREETING"')
    assert.equal(env.stdout.trim(), `${run}|hi there`)
    const tool = await sbx.commands.run('mytool')
    assert.equal(tool.stdout.trim(), `tool-${run}`)
    const where = await sbx.commands.run('cat /home/user/app/where.txt /home/user/app/env.txt')
    assert.equal(where.stdout.trim(), `/home/user/app\n${run}`)
    const ps = await sbx.commands.run('pgrep -f "http.server 8765"')
    assert.ok(ps.stdout.trim().length > 0, 'the start command runs')
    const served = await sbx.commands.run('python3 -c "import urllib.request;print(urllib.request.urlopen(\'http://127.0.0.1:8765/hello.txt\').read().decode())"')
    assert.match(served.stdout, new RegExp(run))
  })

  test('a rebuild with unchanged steps hits the cache (≤ 10% of the first build)', T, async () => {
    const again = await build(fiveSteps(name), name)
    console.log(`# rebuild: ${again.ms} ms (first ${first.ms} ms, ${(100 * again.ms / first.ms).toFixed(1)}%)`)
    assert.ok(again.logs.some((l) => /cached/.test(l)), 'the rebuild reports the cache')
    assert.ok(again.ms <= first.ms * 0.1, `rebuild ${again.ms} ms > 10% of ${first.ms} ms`)
    const sbx = await Sandbox.create(name, { timeoutMs: 60_000 })
    sandboxes.push(sbx)
    assert.equal((await sbx.commands.run('mytool')).stdout.trim(), `tool-${run}`)
  })

  test('a failing RUN ends the build with an error naming the step and exit code', T, async () => {
    const tpl = Template({ fileContextPath: ctxDir }).fromTemplate('base').runCmd('echo before-fail; exit 7')
    const err = await Template.build(tpl, `tpl-fail-${run}`).then(() => null, (e) => e)
    assert.ok(err instanceof BuildError, `got ${err}`)
    assert.match(err.message, /exit code 7/)
    await assert.rejects(Sandbox.create(`tpl-fail-${run}`), 'no usable template after a failed build')
  })

  test('an unknown base template ends the build with an error', T, async () => {
    const tpl = Template().fromTemplate(`no-such-${run}`).runCmd('true')
    const err = await Template.build(tpl, `tpl-nobase-${run}`).then(() => null, (e) => e)
    assert.ok(err instanceof BuildError, `got ${err}`)
    assert.match(err.message, /unknown base template/)
  })
})
