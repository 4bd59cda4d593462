package masq

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// fakeIPT is an in-memory iptables for one family: List answers like
// `iptables -S CHAIN` and Restore applies an iptables-restore --noflush
// payload atomically, with the checks the real tool makes (chains exist,
// deleted rules exist, deleted chains are empty and unreferenced). Rules
// are kept as the "-A …" text they were written with; the real tools'
// normalisation is covered by the privileged tests.
type fakeIPT struct {
	mu          sync.Mutex
	tables      map[string]map[string][]string // table → chain → rules
	noRandom    bool
	restores    []string
	failRestore error
}

var _ iptTool = (*fakeIPT)(nil)

var fakeBuiltins = map[string][]string{
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
}

func newFakeIPT() *fakeIPT {
	f := &fakeIPT{tables: make(map[string]map[string][]string)}
	for table, chains := range fakeBuiltins {
		f.tables[table] = make(map[string][]string)
		for _, c := range chains {
			f.tables[table][c] = nil
		}
	}
	return f
}

func isBuiltin(table, chain string) bool { return slices.Contains(fakeBuiltins[table], chain) }

func (f *fakeIPT) List(table, chain string) ([]string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.tables[table][chain]
	if !ok {
		return nil, false, nil
	}
	head := "-N " + chain
	if isBuiltin(table, chain) {
		head = "-P " + chain + " ACCEPT"
	}
	return append([]string{head}, rules...), true, nil
}

func (f *fakeIPT) HasRandomFully() bool { return !f.noRandom }

func (f *fakeIPT) Restore(_ context.Context, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failRestore != nil {
		return f.failRestore
	}
	next := make(map[string]map[string][]string)
	for t, chains := range f.tables {
		next[t] = maps.Clone(chains)
		for c, rules := range chains {
			next[t][c] = slices.Clone(rules)
		}
	}
	var table map[string][]string
	var tableName string
	for i, line := range strings.Split(strings.TrimSuffix(string(payload), "\n"), "\n") {
		fail := func(format string, args ...any) error {
			return fmt.Errorf("line %d %q: %s", i+1, line, fmt.Sprintf(format, args...))
		}
		fields := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "*"):
			tableName = line[1:]
			table = next[tableName]
			if table == nil {
				return fail("no such table")
			}
		case table == nil:
			return fail("outside a table")
		case line == "COMMIT":
			table = nil
		case strings.HasPrefix(line, ":"):
			name := strings.TrimPrefix(fields[0], ":")
			if !isBuiltin(tableName, name) {
				table[name] = nil // create or flush
			}
		case fields[0] == "-A":
			if _, ok := table[fields[1]]; !ok {
				return fail("no chain %s", fields[1])
			}
			if j := slices.Index(fields, "-j"); j >= 0 && strings.HasPrefix(fields[j+1], "FLANNEL-") {
				if _, ok := table[fields[j+1]]; !ok {
					return fail("no target chain %s", fields[j+1])
				}
			}
			table[fields[1]] = append(table[fields[1]], line)
		case fields[0] == "-D":
			rule := "-A" + strings.TrimPrefix(line, "-D")
			k := slices.Index(table[fields[1]], rule)
			if k < 0 {
				return fail("no such rule")
			}
			table[fields[1]] = slices.Delete(table[fields[1]], k, k+1)
		case fields[0] == "-X":
			rules, ok := table[fields[1]]
			switch {
			case !ok:
				return fail("no chain")
			case len(rules) > 0:
				return fail("chain not empty")
			}
			for _, rs := range table {
				for _, r := range rs {
					if strings.HasSuffix(r, "-j "+fields[1]) {
						return fail("chain referenced by %q", r)
					}
				}
			}
			delete(table, fields[1])
		default:
			return fail("unsupported")
		}
	}
	if table != nil {
		return fmt.Errorf("missing COMMIT")
	}
	f.tables = next
	f.restores = append(f.restores, string(payload))
	return nil
}

// exec runs a one-line change the way an operator would ("-D FLANNEL-POSTRTG
// 2" is not supported; pass the rule text).
func (f *fakeIPT) exec(table string, lines ...string) error {
	return f.Restore(context.Background(), []byte("*"+table+"\n"+strings.Join(lines, "\n")+"\nCOMMIT\n"))
}

// dump is the state as `iptables-save` would show our two tables, in a
// stable order.
func (f *fakeIPT) dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, t := range []string{"filter", "nat"} {
		b.WriteString("*" + t + "\n")
		chains := slices.Sorted(maps.Keys(f.tables[t]))
		for _, c := range chains {
			if isBuiltin(t, c) {
				b.WriteString(":" + c + " ACCEPT\n")
			} else {
				b.WriteString(":" + c + " -\n")
			}
		}
		for _, c := range chains {
			for _, r := range f.tables[t][c] {
				b.WriteString(r + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
