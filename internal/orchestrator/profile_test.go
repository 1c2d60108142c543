package orchestrator

import (
	"maps"
	"testing"
)

// TestWriteProfileKeepsTheParentsEnvironment: a layer's ENV goes over the
// parent's (or the image's), which stays; odd values survive the quoting.
func TestWriteProfileKeepsTheParentsEnvironment(t *testing.T) {
	tree := t.TempDir()
	if err := writeProfile(tree, map[string]string{"FROM_IMAGE": "img", "SHARED": "old", "QUOTE": "it's a $HOME \"x\""}); err != nil {
		t.Fatal(err)
	}
	if err := writeProfile(tree, map[string]string{"SHARED": "new", "STEP": "s", "bad name": "skipped"}); err != nil {
		t.Fatal(err)
	}
	got := readProfile(tree)
	want := map[string]string{"FROM_IMAGE": "img", "SHARED": "new", "STEP": "s", "QUOTE": "it's a $HOME \"x\""}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if err := writeProfile(tree, nil); err != nil || !maps.Equal(readProfile(tree), want) {
		t.Fatalf("an empty ENV changed the profile: %v, %v", err, readProfile(tree))
	}
}
