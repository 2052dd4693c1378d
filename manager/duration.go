package manager

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Duration is a time.Duration written as a string ("10s", "1m30s") in TOML
// and JSON, in the syntax of time.ParseDuration.
type Duration time.Duration

// MarshalText encodes d in the form of time.Duration.String, such as "10s".
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}

// UnmarshalText parses b with time.ParseDuration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		// time's own error quotes the whole input; quote a short, safe part
		// of it instead, because the admin API returns this text to clients.
		return fmt.Errorf("invalid duration %s", quoteShort(string(b)))
	}
	*d = Duration(v)
	return nil
}

// String returns d in the form of time.Duration.String, such as "1m30s".
func (d Duration) String() string {
	return time.Duration(d).String()
}

// maxQuoted is how many bytes of a bad value quoteShort shows.
const maxQuoted = 32

// quoteShort quotes at most maxQuoted bytes of s for an error message,
// replacing characters that mean something in HTML, so that an error carrying
// untrusted input can be shown anywhere.
func quoteShort(s string) string {
	cut := len(s) > maxQuoted
	if cut {
		n := maxQuoted
		for n > 0 && !utf8.RuneStart(s[n]) {
			n-- // do not split a character
		}
		s = s[:n]
	}
	s = strings.Map(func(r rune) rune {
		switch r {
		case '<', '>', '&', '\'', '"':
			return '?'
		}
		return r
	}, s)
	if cut {
		return fmt.Sprintf("%q...", s)
	}
	return fmt.Sprintf("%q", s)
}
