package manager

import (
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// maxServerURL bounds the length of a backend URL; real ones are far shorter.
const maxServerURL = 2048

// ParseServerURL checks a backend URL and returns its identity and canonical
// form. The id is "host:port", with the port defaulted from the scheme (80 for
// http, 443 for https), and canonical is "scheme://id". Scheme and host are
// lowercased and IP addresses written in their shortest form, so every
// spelling of one server yields one id.
//
// Accepted: scheme http or https, a host (an IP address, IPv6 in brackets, or
// a DNS name), an optional port 1..65535, and a path that is empty or "/".
// Anything else is rejected. The error says what is wrong without naming the
// URL, for the caller to prefix with its key ("servers[2].url: ", "url: "), and
// never quotes the input, because the admin API returns it to the client.
func ParseServerURL(raw string) (id, canonical string, err error) {
	if raw == "" {
		return "", "", errors.New("must not be empty")
	}
	if len(raw) > maxServerURL {
		return "", "", errors.New("must be at most " + strconv.Itoa(maxServerURL) + " bytes")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url's error repeats the input, so it is not wrapped.
		return "", "", errors.New("not a valid URL")
	}
	// url.Parse has already lowercased the scheme.
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "", errors.New("scheme must be http or https")
	}
	switch {
	case u.Opaque != "":
		return "", "", errors.New("must have the form scheme://host[:port]")
	case u.User != nil:
		return "", "", errors.New("must not contain user info")
	case u.RawQuery != "" || u.ForceQuery:
		return "", "", errors.New("must not have a query")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return "", "", errors.New("must not have a fragment")
	case u.Path != "" && u.Path != "/":
		return "", "", errors.New(`path must be empty or "/"`)
	}
	host, err := canonicalHost(u.Host, u.Hostname())
	if err != nil {
		return "", "", err
	}
	port, err := serverPort(u)
	if err != nil {
		return "", "", err
	}
	id = net.JoinHostPort(host, port)
	return id, u.Scheme + "://" + id, nil
}

// canonicalHost checks the host part of a backend URL (hostport as written,
// name without brackets and port) and returns it lowercased, with an IP
// address in its canonical form.
func canonicalHost(hostport, name string) (string, error) {
	if name == "" {
		return "", errors.New("host is missing")
	}
	bracketed := strings.HasPrefix(hostport, "[")
	if addr, err := netip.ParseAddr(name); err == nil {
		switch {
		case addr.Zone() != "":
			return "", errors.New("host must not have an IPv6 zone")
		case addr.Is6() && !bracketed:
			return "", errors.New("IPv6 address must be in brackets")
		}
		return addr.String(), nil
	}
	if bracketed {
		return "", errors.New("host in brackets must be an IPv6 address")
	}
	name = strings.ToLower(name)
	if !validDNSName(name) {
		return "", errors.New("host must be an IP address or a DNS name")
	}
	return name, nil
}

// serverPort returns the port of a backend URL as a decimal string, defaulted
// from the scheme when the URL has none.
func serverPort(u *url.URL) (string, error) {
	p := u.Port()
	if p == "" {
		if strings.HasSuffix(u.Host, ":") {
			return "", errors.New("port must not be empty")
		}
		if u.Scheme == "https" {
			return "443", nil
		}
		return "80", nil
	}
	// url.Parse has checked that p is all digits.
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", errors.New("port must be between 1 and 65535")
	}
	return strconv.Itoa(n), nil
}

// validDNSName reports whether s, lowercased, is a DNS name: dot-separated
// labels of 1 to 63 letters, digits, hyphens and underscores, neither starting
// nor ending with a hyphen, 253 bytes in all. A name whose last label is all
// digits is a mistyped IPv4 address (RFC 3696, section 2), not a name.
func validDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}
