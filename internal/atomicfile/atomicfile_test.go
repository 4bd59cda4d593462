package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "f")
	for _, c := range []struct {
		data string
		perm os.FileMode
	}{{"one", 0o644}, {"two", 0o400}} {
		if err := Write(path, []byte(c.data), c.perm); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != c.data {
			t.Fatalf("read back %q, %v; want %q", b, err, c.data)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != c.perm {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), c.perm)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

// TestWriteRemovesDeadWritersTemps: a temporary file nobody holds (its
// writer died) is removed by the next write; one a live writer holds its
// lock on is left alone.
func TestWriteRemovesDeadWritersTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	dead := filepath.Join(dir, ".subnet.env.tmp111")
	live := filepath.Join(dir, ".subnet.env.tmp222")
	other := filepath.Join(dir, ".other.tmp333") // another file's
	for _, p := range []string{dead, live, other} {
		if err := os.WriteFile(p, []byte("half"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var names []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{".other.tmp333", ".subnet.env.tmp222", "subnet.env"}
	if !slices.Equal(names, want) {
		t.Errorf("directory holds %v, want %v", names, want)
	}
}

// TestWriteErrorNamesPath: an error names the file a reader knows, what
// failed and the system's reason, once, on one line.
func TestWriteErrorNamesPath(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "notadir")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "subnet.env")
	err := Write(path, []byte("x"), 0o644)
	want := "write " + path + ": create directory: not a directory"
	if err == nil || err.Error() != want || !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("Write = %v\nwant %s (and errors.Is ENOTDIR)", err, want)
	}
}
