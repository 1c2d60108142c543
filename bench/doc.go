// Package bench is Cocoon's benchmark suite, run by `cocoon bench`.
//
// It drives a real `cocoon server` (started by the suite with its own data
// directory, ports and network prefix, one per runtime, or reached with
// --api-url) through the REST API and the sandbox proxy, speaking the same
// protocol as the E2B SDK: REST with X-API-Key, envd's Connect services with
// the JSON codec and envd's /files endpoint through the proxy with the
// E2b-Sandbox-Id / E2b-Sandbox-Port and X-Access-Token headers.
//
// Next to the sandboxes it measures, on the same host in the same run, the
// floors they are compared with: a fork+exec of true, a `runc run` of the
// template's root filesystem, and a cold boot of the template's microVM.
//
// Results go to a directory (default bench/results): results.json, a
// markdown table (results.md) and a bar chart (results.png). Every figure
// names the runtime and the acceleration it ran on, and the report records
// the host's load average before and after, since figures on a busy host
// are noisy.
package bench
