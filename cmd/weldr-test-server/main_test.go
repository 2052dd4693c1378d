package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestTestServer(t *testing.T) {
	srv := httptest.NewServer(handler())
	t.Cleanup(srv.Close)
	tests := []struct {
		method, path string
		code         int
		body         string // a prefix of the body
		length       int    // of the body, if not 0
	}{
		{"GET", "/", http.StatusOK, "Hello World", len("Hello World")},
		{"HEAD", "/", http.StatusOK, "", 0},
		{"GET", "/large", http.StatusOK, "0000000 the quick brown fox", len(large)},
		{"POST", "/", http.StatusMethodNotAllowed, "", 0},
		{"DELETE", "/large", http.StatusMethodNotAllowed, "", 0},
		{"GET", "/nothing", http.StatusNotFound, "", 0},
		{"GET", "/large/more", http.StatusNotFound, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tc.code {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, res.StatusCode, tc.code)
			}
			if !strings.HasPrefix(string(body), tc.body) {
				t.Errorf("%s %s body = %.40q..., want it to begin %q", tc.method, tc.path, body, tc.body)
			}
			if tc.length != 0 && len(body) != tc.length {
				t.Errorf("%s %s body is %d bytes, want %d", tc.method, tc.path, len(body), tc.length)
			}
		})
	}
	if len(large) < 1<<20 {
		t.Errorf("/large is %d bytes, want at least 1 MiB", len(large))
	}
}
