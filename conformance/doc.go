// Package conformance is weldr's HTTP/1.1 conformance and request-smuggling
// suite. It holds no code of its own, only tests.
//
// The tests treat weldr as a black box: TestMain builds the real binary
// (../cmd/weldr, with -race when the tests run with -race), and each test
// starts it with a loopback-only configuration on free ports, registers a
// scripted raw backend through the admin API, writes raw bytes to the proxy
// and reads raw bytes back. The backend parses what weldr forwards at the
// byte level, records every request (its raw head and its body), and answers
// with whatever bytes the case chooses, malformed ones included. Nothing
// here depends on how the worker is written, so the suite holds across a
// rewrite of the proxying engine.
//
// What it covers, with the RFC 9110 / RFC 9112 section cited on each case:
//
//   - framing: Content-Length and chunked request bodies (extensions,
//     trailers), pipelining and keep-alive with one and two workers,
//     Expect: 100-continue, 1xx, HEAD/204/304, Connection: close and
//     HTTP/1.0, absolute-form targets, Upgrade tunnels, responses framed by
//     the close of the connection;
//   - fields: unknown and repeated fields, order, hop-by-hop fields in both
//     directions, X-Forwarded-* and Via;
//   - limits: proxy.max_header_bytes, the request line, the read-header
//     timeout;
//   - hostile requests: CL+TE, duplicate or invalid Content-Length,
//     obfuscated Transfer-Encoding, obs-fold, whitespace before the colon,
//     CTL and NUL bytes, bad chunk sizes and extensions, bare CR and LF, the
//     classic CL.TE / TE.CL / TE.TE smuggling payloads: each must get 400
//     (or 501 for an unknown coding), a closed connection, and nothing at
//     the backend;
//   - hostile responses: malformed status lines, ambiguous lengths, bad
//     fields, oversized heads, broken bodies: the client gets 502, or an
//     aborted connection once the body has started, never the bad bytes.
//
// docs/SECURITY.md lists each attack, what weldr answers and the test that
// proves it.
//
// Run it on its own (it takes a few seconds):
//
//	go test -count=1 ./conformance/
//
// It began as the guard of the rewrite from net/http to weldr's own
// HTTP/1.1 engine: the new engine had to pass every case, including those
// net/http could not (Content-Length with Transfer-Encoding, obs-fold,
// names listed in a response's Connection field, and more).
package conformance
