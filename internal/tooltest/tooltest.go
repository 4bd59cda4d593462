// Package tooltest finds the external tools some tests run (kube-apiserver,
// helm). Each is built from the Go module proxy by tools/<name>/build.sh, at
// the version its tools module's go.mod requires, and cached outside the
// clone under $WEFT_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/weft)
// as <name>-<version>/<name>, so that a machine pays each build once.
package tooltest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tool describes one tool and its build.
type Tool struct {
	// Name is the binary's name and its directory under tools/.
	Name string
	// Module is the requirement in tools/<Name>/go.mod whose version keys
	// the cache (k8s.io/kubernetes, helm.sh/helm/v3).
	Module string
	// Env names the variable that, when set, holds the binary's path; CI
	// sets it after running the build script.
	Env string
	// ColdBuild says roughly how long a cold build takes, for the log.
	ColdBuild string
}

// Binary returns the tool to run: $Env, else the cache path the build
// script uses. Under CI (CI=true) a missing binary fails the test, never
// skips it, since CI builds it first; locally the build script is run
// (slow once, then cached).
func Binary(t testing.TB, tool Tool) string {
	t.Helper()
	if p := os.Getenv(tool.Env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", tool.Env, p, err)
		}
		return p
	}
	script, err := buildScript(tool.Name)
	if err != nil {
		t.Fatalf("%s: %v", tool.Name, err)
	}
	cached, err := cachePath(tool, filepath.Dir(script))
	if err != nil {
		t.Fatalf("%s: %v", tool.Name, err)
	}
	if _, err := os.Stat(cached); err == nil {
		return cached
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s binary not provided: CI must build it before the tests (bash %s) and export %s", tool.Name, script, tool.Env)
	}
	t.Logf("%s unset: running %s (cached after the first build, which takes %s)", tool.Env, script, tool.ColdBuild)
	cmd := exec.Command("bash", script)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = testWriter{t}
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("build %s with %s: %v", tool.Name, script, err)
	}
	p := strings.TrimSpace(out.String())
	t.Logf("%s at %s (build script took %v)", tool.Name, p, time.Since(start).Round(time.Second))
	return p
}

// buildScript finds tools/<name>/build.sh above the working directory
// (tests run in their package's directory).
func buildScript(name string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "tools", name, "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("tools/%s/build.sh not found above the working directory", name)
		}
		dir = parent
	}
}

// cachePath is where build.sh puts the binary.
func cachePath(tool Tool, toolsDir string) (string, error) {
	mod, err := os.ReadFile(filepath.Join(toolsDir, "go.mod"))
	if err != nil {
		return "", err
	}
	var version string
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == tool.Module {
			version = f[1]
			break
		}
	}
	if version == "" {
		return "", fmt.Errorf("no %s requirement in %s/go.mod", tool.Module, toolsDir)
	}
	dir := os.Getenv("WEFT_CACHE_DIR")
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "weft")
	}
	return filepath.Join(dir, tool.Name+"-"+version, tool.Name), nil
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
