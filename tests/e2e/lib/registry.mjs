// The in-test OCI registry of template.test.mjs: bin/test-registry
// (tests/registry) serves an image of the base template's rootfs without
// envd, cocoon-init and the `user` account, on a free loopback port.

import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { repoRoot } from './server.mjs'

/**
 * Starts bin/test-registry (COCOON_TEST_REGISTRY_BIN) for the base template
 * of dataDir, the image configured with env ({KEY: value}), and resolves
 * to { ref, stop } once the image is pushed. stop() closes its stdin (it
 * then exits) and kills it if it lingers.
 */
export async function startRegistry({ dataDir, env = {}, timeoutMs = 180_000 }) {
  const bin = process.env.COCOON_TEST_REGISTRY_BIN ?? path.join(repoRoot, 'bin/test-registry')
  const args = ['--data-dir', dataDir]
  for (const [k, v] of Object.entries(env)) args.push('--env', `${k}=${v}`)
  const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const exited = once(child, 'exit')
  const ref = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`test-registry printed no image within ${timeoutMs} ms: ${stderr}`)), timeoutMs)
    child.on('error', (err) => { clearTimeout(timer); reject(err) })
    child.on('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`test-registry exited (${code ?? sig}): ${stderr}`)) })
    child.stdout.on('data', (d) => {
      stdout += d
      const nl = stdout.indexOf('\n')
      if (nl >= 0) { clearTimeout(timer); resolve(stdout.slice(0, nl).trim()) }
    })
  }).catch((err) => {
    child.kill('SIGKILL')
    throw err
  })
  async function stop() {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.stdin.end()
    const t = setTimeout(() => child.kill('SIGTERM'), 5_000)
    const k = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(t)
    clearTimeout(k)
  }
  return { ref, stop, log: () => stderr }
}
