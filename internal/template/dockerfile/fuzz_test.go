package dockerfile

import (
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary Dockerfiles to Parse: no panic, and what it
// accepts is a spec the api accepts too (steps.Spec.Validate).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"FROM base\nRUN echo hi\n",
		"FROM debian:12\nARG V=1\nENV A=$V B=\"x y\"\nWORKDIR /app\nCOPY --chown=user:user . /app\nUSER user\nCMD [\"python3\", \"-m\", \"http.server\"]\n",
		"FROM base\nRUN apt-get update && \\\n  apt-get install -y curl\n# comment\nEXPOSE 80\n",
		"FROM scratch AS b\nCOPY --from=b /x /y\n",
		"FROM base\nADD https://example.invalid/x.tar.gz /x\nENTRYPOINT x\n",
		"RUN x\n", "FROM\n", "FROM base\nCOPY ../x /y\n", "FROM base\nENV\n", "\\\n\\\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		res, err := Parse(strings.NewReader(src), Options{BuildArgs: map[string]string{"V": "2"}})
		if err != nil {
			return
		}
		if res == nil {
			t.Fatal("nil result without an error")
		}
		_ = res.Spec.Validate()
	})
}
