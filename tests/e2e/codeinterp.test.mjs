// End-to-end test of the code interpreter, driven by the official, unchanged
// @e2b/code-interpreter SDK against a running `cocoon server`:
//
//   source <data-dir>/sdk.env && node --test tests/e2e/codeinterp.test.mjs
//
// before(): `cocoon template build code-interpreter` (code-interpreter-deps,
// then code-interpreter-v1; cached on the server's data dir, timed). Then
// Sandbox.create() with the SDK's default template and runCode: state
// across calls, stdout/stderr callbacks, an error with its traceback, a
// matplotlib PNG with its chart, a DataFrame as data and html, env vars (the
// sandbox's and per call), a timeout whose context stays usable, a
// JavaScript context, an unknown language → 400, two sandboxes never
// sharing state. COCOON_BIN defaults to bin/cocoon (with bin/code-interpreter
// beside it).

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { repoRoot } from './lib/server.mjs'

const { Sandbox } = await import('@e2b/code-interpreter')

const T = { timeout: 300_000 }
const bin = process.env.COCOON_BIN ?? join(repoRoot, 'bin/cocoon')
const sandboxes = []

function buildTemplates() {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    execFile(bin, ['template', 'build', 'code-interpreter'], { env: process.env, maxBuffer: 64 << 20, timeout: 1_500_000 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`template build code-interpreter: ${err.message}\n${String(stderr).split('\n').slice(-40).join('\n')}`))
        return
      }
      resolve({ ms: Date.now() - t0, out: stdout + stderr })
    })
  })
}

after(async () => {
  for (const s of sandboxes) await s.kill().catch(() => {})
})

describe('code interpreter (@e2b/code-interpreter)', () => {
  let sbx

  before(async () => {
    const b = await buildTemplates()
    const cached = (b.out.match(/cached/g) ?? []).length
    console.log(`# template build code-interpreter: ${b.ms} ms (${cached} cache notes)`)
    const t0 = Date.now()
    sbx = await Sandbox.create({ timeoutMs: 300_000, envs: { COCOON_CI_ENV: 'from-create' } })
    sandboxes.push(sbx)
    const first = await sbx.runCode('1+1')
    console.log(`# create → first runCode('1+1'): ${Date.now() - t0} ms`)
    assert.equal(first.text, '2')
  }, { timeout: 1_800_000 })

  test('state is kept across runCode calls; warm round trips', T, async () => {
    await sbx.runCode('x = 1')
    const r = await sbx.runCode('x += 1; x')
    assert.equal(r.text, '2')
    const times = []
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now()
      await sbx.runCode('x += 1')
      times.push(performance.now() - t0)
    }
    times.sort((a, b) => a - b)
    console.log(`# warm runCode('x += 1') p50 ${times[5].toFixed(1)} ms`)
    assert.equal((await sbx.runCode('x')).text, '12')
  })

  test('stdout and stderr reach the callbacks as they are printed', T, async () => {
    const out = [], err = []
    const r = await sbx.runCode('import sys\nprint("hello")\nprint("oops", file=sys.stderr)', {
      onStdout: (m) => out.push(m.line), onStderr: (m) => err.push(m.line),
    })
    assert.deepEqual(out, ['hello\n'])
    assert.deepEqual(err, ['oops\n'])
    assert.deepEqual(r.logs.stdout, ['hello\n'])
    assert.deepEqual(r.logs.stderr, ['oops\n'])
  })

  test('an error comes back with name, value and traceback', T, async () => {
    let seen
    const r = await sbx.runCode('def f():\n    raise ValueError("bad value")\nf()', { onError: (e) => { seen = e } })
    assert.equal(r.error.name, 'ValueError')
    assert.equal(r.error.value, 'bad value')
    assert.match(r.error.traceback, /ValueError/)
    assert.match(r.error.traceback, /f\(\)/)
    assert.equal(seen.name, 'ValueError')
  })

  test('a matplotlib chart comes back as PNG and as a chart object', T, async () => {
    const r = await sbx.runCode([
      'import matplotlib.pyplot as plt',
      'plt.figure()',
      'plt.plot([1, 2, 3], [2, 4, 8], label="growth")',
      'plt.title("Growth")',
      'plt.xlabel("time (s)")',
      'plt.show()',
    ].join('\n'))
    assert.equal(r.results.length, 1)
    const png = Buffer.from(r.results[0].png, 'base64')
    assert.equal(png.subarray(1, 4).toString(), 'PNG')
    const chart = r.results[0].chart
    assert.equal(chart.type, 'line')
    assert.equal(chart.title, 'Growth')
    assert.equal(chart.x_label, 'time (s)')
    assert.equal(chart.x_unit, 's')
    assert.deepEqual(chart.elements[0].points, [[1, 2], [2, 4], [3, 8]])
    assert.equal(chart.elements[0].label, 'growth')
  })

  test('a DataFrame comes back as data and html', T, async () => {
    const r = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", "y"]})')
    assert.equal(r.results.length, 1)
    assert.deepEqual(r.results[0].data, { a: [1, 2], b: ['x', 'y'] })
    assert.match(r.results[0].html, /<table/)
    assert.ok(r.results[0].isMainResult)
  })

  test('env vars: the sandbox\'s reach the kernel; per-call ones last one call', T, async () => {
    assert.equal((await sbx.runCode('import os; os.environ.get("COCOON_CI_ENV")')).text, 'from-create')
    assert.equal((await sbx.runCode('os.environ.get("PER_CALL")', { envs: { PER_CALL: 'once' } })).text, 'once')
    assert.equal((await sbx.runCode('os.environ.get("PER_CALL") is None')).text, 'True')
  })

  test('a timeout interrupts the execution; the context stays usable', T, async () => {
    await sbx.runCode('kept = 42')
    const t0 = Date.now()
    await assert.rejects(sbx.runCode('import time\nwhile True: time.sleep(0.01)', { timeoutMs: 1500 }), /timed out|timeout/i)
    console.log(`# timeout returned after ${Date.now() - t0} ms`)
    assert.equal((await sbx.runCode('kept')).text, '42')
  })

  test('a JavaScript context keeps its state', T, async () => {
    const ctx = await sbx.createCodeContext({ language: 'javascript' })
    assert.equal(ctx.language, 'javascript')
    await sbx.runCode('var n = 20', { context: ctx })
    const out = []
    const r = await sbx.runCode('console.log("js says", n); n * 2 + 2', { context: ctx, onStdout: (m) => out.push(m.line) })
    assert.equal(r.text, '42')
    assert.deepEqual(out, ['js says 20\n'])
    const contexts = await sbx.listCodeContexts()
    assert.ok(contexts.some((c) => c.id === ctx.id))
    await sbx.restartCodeContext(ctx)
    const gone = await sbx.runCode('typeof n', { context: ctx })
    assert.equal(gone.text, 'undefined')
    await sbx.removeCodeContext(ctx)
    await assert.rejects(sbx.runCode('1', { context: ctx }), /not found/i)
  })

  test('a TypeScript context strips types and keeps its state', T, async () => {
    const r1 = await sbx.runCode('const add = (a: number, b: number): number => a + b\ninterface P { n: number }\nconst p: P = { n: 40 }', { language: 'typescript' })
    assert.equal(r1.error, undefined, `first cell: ${r1.error?.value}`)
    const r2 = await sbx.runCode('add(p.n, 2)', { language: 'typescript' })
    assert.equal(r2.text, '42')
  })

  test('a bash context keeps its variables and working directory', T, async () => {
    const ctx = await sbx.createCodeContext({ language: 'bash', cwd: '/tmp' })
    await sbx.runCode('cd /home/user && N=41', { context: ctx })
    const r = await sbx.runCode('echo $((N + 1)) $PWD', { context: ctx })
    assert.deepEqual(r.logs.stdout, ['42 /home/user\n'])
    const failed = await sbx.runCode('exit_code_test() { return 3; }; exit_code_test', { context: ctx })
    assert.ok(failed.error, 'a failing last command is an error')
    await sbx.removeCodeContext(ctx)
  })

  test('an unknown language is a 400 naming the languages available', T, async () => {
    const err = await sbx.runCode('1', { language: 'cobol' }).then(() => null, (e) => e)
    assert.ok(err, 'runCode in cobol must fail')
    assert.match(String(err.message), /400/)
  })

  test('a kernel that exits is restarted; the sandbox lives on', T, async () => {
    const r = await sbx.runCode('import os\nos._exit(1)')
    assert.ok(r.error, 'the exit is reported as an error')
    assert.equal((await sbx.runCode('1+1')).text, '2')
  })

  test('two sandboxes never share state', T, async () => {
    const other = await Sandbox.create({ timeoutMs: 120_000 })
    sandboxes.push(other)
    await sbx.runCode('secret = "mine"')
    const r = await other.runCode('"secret" in globals()')
    assert.equal(r.text, 'False')
    await other.kill()
  })
})
