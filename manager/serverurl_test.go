package manager

import (
	"strings"
	"testing"
)

func TestParseServerURL(t *testing.T) {
	tests := []struct {
		name          string
		raw           string
		wantID        string
		wantCanonical string
	}{
		{"ipv4 with port", "http://10.0.0.5:8080", "10.0.0.5:8080", "http://10.0.0.5:8080"},
		{"https default port", "https://example.com", "example.com:443", "https://example.com:443"},
		{"http default port", "http://example.com", "example.com:80", "http://example.com:80"},
		{"ipv6 with slash", "http://[::1]:9000/", "[::1]:9000", "http://[::1]:9000"},
		{"ipv6 default port", "https://[2001:db8::1]", "[2001:db8::1]:443", "https://[2001:db8::1]:443"},
		{"ipv6 long form", "http://[0:0:0:0:0:0:0:1]:80", "[::1]:80", "http://[::1]:80"},
		{"uppercase", "HTTP://A.example:80", "a.example:80", "http://a.example:80"},
		{"leading zeros in port", "http://h:0080", "h:80", "http://h:80"},
		{"underscore and hyphen", "http://my_svc-1.local:81", "my_svc-1.local:81", "http://my_svc-1.local:81"},
		{"single label", "http://backend:8000", "backend:8000", "http://backend:8000"},
		{"max port", "http://h:65535", "h:65535", "http://h:65535"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, canonical, err := ParseServerURL(tc.raw)
			if err != nil {
				t.Fatalf("ParseServerURL(%q) error = %v, want nil", tc.raw, err)
			}
			if id != tc.wantID || canonical != tc.wantCanonical {
				t.Errorf("ParseServerURL(%q) = %q, %q, want %q, %q", tc.raw, id, canonical, tc.wantID, tc.wantCanonical)
			}
			// The canonical form is a fixed point.
			id2, canonical2, err := ParseServerURL(canonical)
			if err != nil || id2 != id || canonical2 != canonical {
				t.Errorf("ParseServerURL(%q) = %q, %q, %v, want %q, %q, nil", canonical, id2, canonical2, err, id, canonical)
			}
		})
	}
}

func TestParseServerURLRejects(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		wantErr string
	}{
		{"empty", "", "must not be empty"},
		{"not a url", "not a url", "scheme must be http or https"},
		{"unparsable", "http://h:port", "not a valid URL"},
		{"other scheme", "ftp://x", "scheme must be http or https"},
		{"no scheme", "10.0.0.5:8080", "not a valid URL"},
		{"no host", "http://", "host is missing"},
		{"only port", "http://:80", "host is missing"},
		{"opaque", "http:h:80", "form scheme://host[:port]"},
		{"user info", "http://user:pw@h:1", "user info"},
		{"port zero", "http://h:0", "port must be between 1 and 65535"},
		{"port too big", "http://h:99999", "port must be between 1 and 65535"},
		{"port overflow", "http://h:99999999999999999999999", "port must be between 1 and 65535"},
		{"empty port", "http://h:", "port must not be empty"},
		{"path", "http://h/path", `path must be empty or "/"`},
		{"escaped slash path", "http://h/%2F", `path must be empty or "/"`},
		{"query", "http://h?q=1", "must not have a query"},
		{"empty query", "http://h?", "must not have a query"},
		{"fragment", "http://h#f", "must not have a fragment"},
		{"empty fragment", "http://h#", "must not have a fragment"},
		{"html", "<script>", "scheme must be http or https"},
		{"html host", "http://<script>alert(1)</script>", `path must be empty or "/"`},
		{"html in host", "http://<b>:80", "IP address or a DNS name"},
		{"ipv6 zone", "http://[fe80::1%25eth0]:80", "IPv6 zone"},
		{"brackets around name", "http://[example.com]:80", "not a valid URL"},
		{"bad name", "http://exa mple.com", "not a valid URL"},
		{"label starts with hyphen", "http://-a.example", "IP address or a DNS name"},
		{"empty label", "http://a..example", "IP address or a DNS name"},
		{"trailing dot", "http://example.com.", "IP address or a DNS name"},
		{"bad ipv4", "http://010.0.0.1", "IP address or a DNS name"},
		{"ipv4 out of range", "http://300.0.0.1:80", "IP address or a DNS name"},
		{"long label", "http://" + strings.Repeat("a", 64) + ".example", "IP address or a DNS name"},
		{"too long", "http://h/" + strings.Repeat("a", 3000), "at most 2048 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, canonical, err := ParseServerURL(tc.raw)
			if err == nil {
				t.Fatalf("ParseServerURL(%q) = %q, %q, nil, want error containing %q", tc.raw, id, canonical, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseServerURL(%q) error = %q, want it to contain %q", tc.raw, err, tc.wantErr)
			}
			// The admin API returns the message verbatim: it must not
			// carry the input, nor anything that could be markup.
			if tc.raw != "" && strings.Contains(err.Error(), tc.raw) {
				t.Errorf("ParseServerURL(%q) error = %q, want it not to echo the input", tc.raw, err)
			}
			if strings.ContainsAny(err.Error(), "<>&") {
				t.Errorf("ParseServerURL(%q) error = %q, want no HTML characters", tc.raw, err)
			}
		})
	}
}

func FuzzParseServerURL(f *testing.F) {
	for _, s := range []string{
		"http://10.0.0.5:8080", "https://example.com", "http://[::1]:9000/",
		"HTTP://A.example:80", "ftp://x", "http://user:pw@h:1", "http://h:0",
		"http://h/path", "http://h?q=1", "http://h#f", "", "<script>",
		"http://[fe80::1%25eth0]:80", "http://[::ffff:1.2.3.4]",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		id, canonical, err := ParseServerURL(raw)
		if err != nil {
			if strings.ContainsAny(err.Error(), "<>&") {
				t.Errorf("ParseServerURL(%q) error = %q, want no HTML characters", raw, err)
			}
			return
		}
		id2, canonical2, err := ParseServerURL(canonical)
		if err != nil || id2 != id || canonical2 != canonical {
			t.Errorf("ParseServerURL(%q) = %q, %q, %v, want %q, %q, nil", canonical, id2, canonical2, err, id, canonical)
		}
	})
}
