package threatmodel_test

import (
	"encoding/json"
	"net/http"
	"strings"
)

// echoTarget answers every request with its headers and body: a target
// that gives the credential back.
func echoTarget() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr := map[string]string{}
		for k, v := range r.Header {
			hdr[k] = strings.Join(v, ",")
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"headers": hdr, "path": r.URL.Path})
	})
}
