// End-to-end test of custom templates, driven by the official, unchanged e2b
// SDK's Template builder and by `cocoon template build -f Dockerfile`
// against a running `cocoon server`:
//
//   source <data-dir>/sdk.env && COCOON_E2E_DATA_DIR=<data-dir> node --test tests/e2e/template.test.mjs
//
// Template().fromTemplate('base').runCmd().copy().setEnvs().setWorkdir()
// .setStartCmd(cmd, readyCmd) → Template.build → Sandbox.create from it; a
// rebuild with unchanged steps hits the cache (and is timed); a failing RUN
// and a ready command that never succeeds end the build with an error.
// Template().fromImage() of an image in a registry started by the test
// (bin/test-registry: the base rootfs without envd, cocoon-init and the
// `user` account, which the import must add); a Dockerfile (FROM base,
// ARG, COPY, USER, RUN, ENV, WORKDIR) built with the CLI; a Dockerfile with
// an unsupported instruction refused with its line.
//
// COCOON_E2E_DATA_DIR (default /var/lib/cocoon) is the server's data dir,
// whose base template the registry's image is made of; COCOON_BIN and
// COCOON_TEST_REGISTRY_BIN default to bin/cocoon and bin/test-registry.

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { repoRoot } from './lib/server.mjs'
import { startRegistry } from './lib/registry.mjs'

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
    // setWorkdir is where the sandbox's commands start, as in E2B.
    const pwd = await sbx.commands.run('pwd')
    assert.equal(pwd.stdout.trim(), '/home/user/app')
    const ps = await sbx.commands.run('pgrep -f "http.server 8765"')
    assert.ok(ps.stdout.trim().length > 0, 'the start command runs')
    const served = await sbx.commands.run('python3 -c "import urllib.request;print(urllib.request.urlopen(\'http://127.0.0.1:8765/hello.txt\').read().decode())"')
    assert.match(served.stdout, new RegExp(run))
  })

  test('a rebuild with unchanged steps hits the cache (≤ 10% of the first build); its tag names it', T, async () => {
    const again = await build(fiveSteps(name), `${name}:v2`)
    console.log(`# rebuild: ${again.ms} ms (first ${first.ms} ms, ${(100 * again.ms / first.ms).toFixed(1)}%)`)
    assert.ok(again.logs.some((l) => /cached/.test(l)), 'the rebuild reports the cache')
    assert.ok(again.ms <= first.ms * 0.1, `rebuild ${again.ms} ms > 10% of ${first.ms} ms`)
    const sbx = await Sandbox.create(`${name}:v2`, { timeoutMs: 60_000 })
    sandboxes.push(sbx)
    assert.equal((await sbx.commands.run('mytool')).stdout.trim(), `tool-${run}`)
    const err = await Sandbox.create(`${name}:no-such-tag`, { timeoutMs: 60_000 }).then((s) => { sandboxes.push(s); return null }, (e) => e)
    assert.ok(err, 'a create from an unknown tag must fail')
    assert.match(String(err.message), /not found/i)
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

describe('custom templates from an OCI image (in-test registry)', () => {
  const name = `img-${run}`
  let registry, sbx

  before(async () => {
    registry = await startRegistry({ dataDir: process.env.COCOON_E2E_DATA_DIR ?? '/var/lib/cocoon', env: { COCOON_IMAGE_ENV: `image-${run}` } })
    console.log(`# registry image ${registry.ref}`)
  }, T)
  after(async () => { await registry?.stop() })

  test('fromImage + RUN + ENV builds; the import adds envd, cocoon-init and the user account', T, async () => {
    const tpl = Template()
      .fromImage(registry.ref)
      .runCmd(`echo from-image-${run} > /opt/from-image.txt && id -un >> /opt/from-image.txt`, { user: 'root' })
      .setEnvs({ COCOON_TPL_IMG: run })
    const { info, logs, ms } = await build(tpl, name)
    console.log(`# image build: ${ms} ms, ${logs.length} log lines`)
    assert.ok(info.templateId)
    assert.ok(logs.some((l) => l.includes(`FROM image ${registry.ref}`)), 'the build names the image')
    assert.ok(logs.some((l) => /image sha256:[0-9a-f]{64} imported/.test(l)), `the image is pulled and imported:\n${logs.join('\n')}`)

    sbx = await Sandbox.create(name, { timeoutMs: 120_000 })
    sandboxes.push(sbx)
    // commands.run answers: envd was installed by the import.
    const r = await sbx.commands.run('cat /opt/from-image.txt; echo "$COCOON_TPL_IMG"; id -un; id user; sudo -n id -u')
    assert.equal(r.stdout, `from-image-${run}\nroot\n${run}\nuser\nuid=1000(user) gid=1000(user) groups=1000(user)\n0\n`)
    const pieces = await sbx.commands.run('test -x /usr/local/bin/envd && test -x /usr/local/sbin/cocoon-init && stat -c "%U %a" /home/user')
    assert.equal(pieces.stdout.trim(), 'user 750')
    assert.equal(await sbx.files.read('/opt/from-image.txt'), `from-image-${run}\nroot\n`)
  })

  // A layer's ENV goes over the parent's (here the image config's
  // environment) in /etc/profile.d/cocoon-template.sh, which keeps it.
  test('the image config\'s environment survives the template\'s ENV steps', T, async () => {
    assert.ok(sbx, 'no sandbox from the image template')
    const r = await sbx.commands.run('echo "$COCOON_IMAGE_ENV|$COCOON_TPL_IMG"')
    assert.equal(r.stdout.trim(), `image-${run}|${run}`)
  })

  test('an unknown tag in the registry ends the build with an error', T, async () => {
    const ref = registry.ref.replace(/:[^:/]+$/, ':no-such-tag')
    const err = await Template.build(Template().fromImage(ref), `img-missing-${run}`).then(() => null, (e) => e)
    assert.ok(err instanceof BuildError, `got ${err}`)
    assert.match(err.message, /unknown base image/)
  })
})

/** Runs the cocoon CLI with the SDK's environment; never throws on a non-zero exit. */
function cocoon(args, { timeout = 600_000 } = {}) {
  const bin = process.env.COCOON_BIN ?? join(repoRoot, 'bin/cocoon')
  return new Promise((resolve) => {
    execFile(bin, args, { timeout, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr })
    })
  })
}

describe('custom templates from a Dockerfile (cocoon template build -f)', () => {
  const name = `df-${run}`
  const dfDir = mkdtempSync(join(tmpdir(), 'cocoon-df-'))
  after(() => rmSync(dfDir, { recursive: true, force: true }))

  test('FROM base, ARG, COPY, USER, RUN, ENV, WORKDIR: the CLI streams the build, the sandbox has its effects', T, async () => {
    mkdirSync(join(dfDir, 'app'))
    writeFileSync(join(dfDir, 'app', 'hello.txt'), `hello dockerfile ${run}\n`)
    writeFileSync(join(dfDir, 'app', 'greet.sh'), '#!/bin/sh\necho "greetings from $(pwd) as $(id -un): $DF_GREETING"\n')
    chmodSync(join(dfDir, 'app', 'greet.sh'), 0o755)
    writeFileSync(join(dfDir, 'Dockerfile'), [
      '# the end-to-end Dockerfile',
      'FROM base',
      'ARG RUN_ID=unset',
      'COPY app/ /opt/app/',
      'USER root',
      'RUN echo "built-$RUN_ID" && echo "ran $RUN_ID as $(id -un)" > /opt/app/ran.txt',
      'ENV DF_GREETING="hello from the Dockerfile" \\',
      '    DF_RUN=$RUN_ID',
      'WORKDIR /opt/app',
      'RUN ./greet.sh > greeted.txt',
      'LABEL purpose=e2e',
      'USER user',
      '',
    ].join('\n'))
    const t0 = Date.now()
    const res = await cocoon(['template', 'build', '-f', join(dfDir, 'Dockerfile'), '--name', name, '--build-arg', `RUN_ID=${run}`])
    console.log(`# Dockerfile build: ${Date.now() - t0} ms, exit ${res.code}`)
    assert.equal(res.code, 0, `cocoon template build failed:\n${res.stdout}\n${res.stderr}`)
    assert.match(res.stdout, new RegExp(`template ${name} \\(\\S+\\) ready in`))
    assert.match(res.stderr, /uploading files [0-9a-f]{12}/, 'the COPY context is uploaded')
    assert.match(res.stderr, /note: line 11: LABEL ignored/)
    assert.match(res.stderr, /\] RUN \.\/greet\.sh/, 'step logs are streamed')
    assert.ok(res.stderr.includes(`built-${run}`), `the RUN's output is streamed:\n${res.stderr}`)

    const sbx = await Sandbox.create(name, { timeoutMs: 120_000 })
    sandboxes.push(sbx)
    assert.equal(await sbx.files.read('/opt/app/hello.txt'), `hello dockerfile ${run}\n`)
    const r = await sbx.commands.run('cat /opt/app/ran.txt /opt/app/greeted.txt; echo "$DF_GREETING|$DF_RUN"; test -x /opt/app/greet.sh && echo exec')
    assert.equal(r.stdout, `ran ${run} as root\ngreetings from /opt/app as root: hello from the Dockerfile\nhello from the Dockerfile|${run}\nexec\n`)
  })

  test('an unsupported instruction fails with a message naming its line', T, async () => {
    writeFileSync(join(dfDir, 'Dockerfile.bad'), 'FROM base\nRUN true\nSHELL ["/bin/bash", "-c"]\nRUN echo never\n')
    const res = await cocoon(['template', 'build', '-f', join(dfDir, 'Dockerfile.bad'), '--name', `df-bad-${run}`], { timeout: 60_000 })
    assert.notEqual(res.code, 0, 'the build must fail')
    assert.match(res.stderr, /Dockerfile line 3: SHELL is not supported/)
    await assert.rejects(Sandbox.create(`df-bad-${run}`), 'no template was made')
  })
})
