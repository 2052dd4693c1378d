package manager

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// bearerChallenge is the WWW-Authenticate header of a 401 (RFC 6750,
// section 3).
const bearerChallenge = `Bearer realm="weldr"`

// requireToken returns next behind bearer token authentication (RFC 6750):
// a request that does not carry "Authorization: Bearer <token>" is answered
// 401, with a JSON error, and never reaches next. If token is empty, next is
// returned as it is.
func (m *Manager) requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := sha256.Sum256([]byte(token))
	deny := m.api(func(*http.Request) (int, any, error) {
		return 0, nil, errorf(http.StatusUnauthorized, "missing or invalid bearer token")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !validBearer(r.Header.Values("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", bearerChallenge)
			deny.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// validBearer reports whether the Authorization header values are one
// bearer credential whose token has the SHA-256 digest want. The scheme is
// case-insensitive (RFC 9110, section 11.1); the token is compared exactly.
// Comparing digests in constant time leaks neither the token nor its
// length through timing.
func validBearer(values []string, want [sha256.Size]byte) bool {
	if len(values) != 1 {
		return false // none, or an ambiguous request
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimLeft(token, " ")))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}
