package subnetenv

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// writerEnv names the subnet file a re-executed test binary writes in a
// loop (TestWriterProcess) until it is killed.
const writerEnv = "WEFT_SUBNETENV_CRASH_WRITER"

// crashVersions are the two contents the writer alternates between: a long
// one (a 5 KiB file, several pages' worth of writes) and a short one, so a
// torn or truncated file cannot pass for either.
func crashVersions() [2]Env {
	var many []netip.Prefix
	for i := range 300 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
	}
	return [2]Env{
		{Networks: many, Subnet: GatewayOf(netip.MustParsePrefix("10.0.7.0/24")), MTU: 1450, IPMasq: true},
		{Networks: []netip.Prefix{netip.MustParsePrefix("10.5.0.0/16")}, Subnet: GatewayOf(netip.MustParsePrefix("10.5.9.0/24")), MTU: 1400},
	}
}

// TestWriterProcess is the writer TestWriteSurvivesSIGKILL runs as a child
// process: with writerEnv set it writes the two versions in turn, each a
// real write, forever; it says "writing" once it is about to start.
// Without writerEnv (a normal test run) it has nothing to do.
func TestWriterProcess(t *testing.T) {
	path := os.Getenv(writerEnv)
	if path == "" {
		return
	}
	v := crashVersions()
	fmt.Println("writing")
	for i := 0; ; i++ {
		if err := Write(path, v[i%2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
}

// TestWriteSurvivesSIGKILL kills a process writing subnet.env at random
// moments, hundreds of times: after each kill the file is whole — one of
// the two complete versions, never empty or partial — and temporary files
// of killed writers do not pile up (the next writer removes them).
func TestWriteSurvivesSIGKILL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	v := crashVersions()
	if err := Write(path, v[1]); err != nil {
		t.Fatal(err)
	}
	const rounds = 300
	deadline := time.Now().Add(60 * time.Second)
	seen := [2]int{}
	withTemp, maxTemps := 0, 0
	n := 0
	for ; n < rounds && time.Now().Before(deadline); n++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWriterProcess$")
		cmd.Env = append(os.Environ(), writerEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "writing\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: writer said %q (stderr %s)", n, line, stderr.String())
		}
		// 0–3 ms into the loop; a write of the long version takes tens
		// of microseconds plus its fsync.
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		cmd.Process.Signal(syscall.SIGKILL)
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: writer ended by itself: %v (stderr %s)", n, err, stderr.String())
		}

		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("round %d: %v", n, err)
		}
		got, err := Parse(data)
		if err != nil {
			t.Fatalf("round %d: the file does not parse: %v\n%s", n, err, data)
		}
		which := -1
		for i := range v {
			if string(data) == string(v[i].Marshal()) {
				which = i
			}
		}
		if which < 0 {
			t.Fatalf("round %d: the file is neither version (%d bytes): %s", n, len(data),
				cmp.Diff(v[0], got, equatePrefixes))
		}
		seen[which]++
		temps := tempFiles(t, dir)
		if temps > 0 {
			withTemp++
		}
		maxTemps = max(maxTemps, temps)
		// The killed writer's own; every earlier one was removed by
		// the writer after it.
		if temps > 1 {
			t.Fatalf("round %d: %d temporary files left", n, temps)
		}
	}
	if n < 100 {
		t.Fatalf("only %d rounds in the time allowed", n)
	}
	// The next write removes the last killed writer's temporary file.
	if err := Write(path, v[n%2]); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, v[(n+1)%2]); err != nil {
		t.Fatal(err)
	}
	if temps := tempFiles(t, dir); temps != 0 {
		t.Errorf("%d temporary files left after a clean write", temps)
	}
	t.Logf("%d writers killed: the file whole every time (long version %d times, short %d); %d kills left a temporary file (removed by the next writer); at most %d at once",
		n, seen[0], seen[1], withTemp, maxTemps)
	if seen[0] == 0 || seen[1] == 0 {
		t.Errorf("the kills never landed after a write of one version: %v", seen)
	}
}

func tempFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if e.Name() != "subnet.env" {
			n++
		}
	}
	return n
}
