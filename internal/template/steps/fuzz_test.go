package steps

import (
	"encoding/json"
	"path"
	"strings"
	"testing"
)

// FuzzSpec feeds arbitrary REST bodies of POST /v2/templates/{id}/builds/{id}
// to the decoding, validation and keying the api does: no panic, and a spec
// that validates copies only from inside the build context.
func FuzzSpec(f *testing.F) {
	hash := strings.Repeat("a", 64)
	for _, s := range []string{
		`{"fromTemplate":"base","steps":[{"type":"RUN","args":["echo hi"]}]}`,
		`{"fromImage":"debian:12","startCmd":"x","readyCmd":"y","steps":[{"type":"COPY","args":["app","/app"],"filesHash":"` + hash + `"}]}`,
		`{"steps":[{"type":"COPY","args":["../../etc","/x"],"filesHash":"` + hash + `"}]}`,
		`{"steps":[{"type":"ENV","args":["A","1","B"]},{"type":"WORKDIR","args":[]},{"type":"USER","args":["root"]}]}`,
		`{"steps":[{"type":"COPY","args":["/abs","/x","user","0755"],"filesHash":"zz"}]}`,
		`{"steps":null}`, `[]`, `{"force":true,"steps":[{"type":"run"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var s Spec
		if json.Unmarshal(body, &s) != nil {
			return
		}
		if s.Validate() != nil {
			return
		}
		Keys("parent", s, 2, 512)
		Final(s)
		for _, st := range s.Steps {
			if st.Type != Copy {
				continue
			}
			src := path.Clean(st.Args[0])
			if path.IsAbs(src) || src == ".." || strings.HasPrefix(src, "../") {
				t.Fatalf("COPY source %q validated", st.Args[0])
			}
		}
	})
}
