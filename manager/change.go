package manager

// change is an admin change of the registered servers, queued to be saved
// in the state file and then made (see Manager.commit): add, new or with
// new settings, or the removal of the server whose ID is remove. Never a
// static server: the configuration file holds those.
type change struct {
	add    *Server
	remove string

	// Set when it is committed, with stateMu held.
	done    bool
	err     error      // the state file could not be saved: the change was not made
	added   bool       // add was new
	changed bool       // the pool changed: add was new or updated, or remove was in it
	view    serverView // add as the pool has it afterwards
	version uint64     // the pool's version once the change was made
}

// commit returns once c, queued with m.mu held, is committed: saved in the
// state file, then made in the pool and broadcast; or, if the state file
// could not be saved, refused with c.err set and nothing changed.
//
// Changes queued together are committed together, with one write: whoever
// takes stateMu first commits every change queued by then, so a burst of
// them costs a few writes rather than one each.
func (m *Manager) commit(c *change) {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if !c.done {
		m.commitQueued()
	}
}

// persist commits the changes queued, so that a hand-over to a new
// generation, which follows, carries them.
func (m *Manager) persist() {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	m.commitQueued()
}

// commitQueued saves the registered servers as the queued changes will
// leave them, then makes the changes in the order they were queued. If the
// save fails, it makes none. Called with stateMu held: nothing else changes
// the registered servers meanwhile, so the pool comes out as saved.
func (m *Manager) commitQueued() {
	path := m.cfg.State.File
	m.mu.Lock()
	batch := m.queued
	m.queued, m.saving = nil, batch
	var next []Server
	changed := false
	if path != "" && len(batch) > 0 {
		next, changed = planned(m.registered(), m.pool.Get, batch)
	}
	m.mu.Unlock()
	if len(batch) == 0 {
		return
	}

	var err error
	if changed {
		err = writeState(path, next)
	}
	m.mu.Lock()
	for _, c := range batch {
		c.done, c.err = true, err
		if err == nil {
			m.apply(c)
		}
	}
	m.saving = nil
	m.mu.Unlock()
	if err != nil {
		m.stateFailures.Add(1)
		m.log.Error("state file not saved; admin changes refused", "changes", len(batch), "error", err)
	}
}

// planned returns the registered servers as changes will leave them, and
// whether they change them at all. get finds a server in the pool as it
// is before the changes. The cost is a pass over registered, whose array
// it reuses: the changes are looked up, not replayed on a copy of the
// pool.
func planned(registered []Server, get func(id string) *Server, changes []*change) (next []Server, changed bool) {
	after := make(map[string]*Server, len(changes)) // as the changes leave them; nil: removed
	var added []string                              // not in the pool before, in order
	now := func(id string) *Server {
		if s, ok := after[id]; ok {
			return s
		}
		return get(id)
	}
	for _, c := range changes {
		if c.add == nil {
			if now(c.remove) != nil {
				after[c.remove], changed = nil, true
			}
			continue
		}
		if s := now(c.add.ID); s != nil && s.unchangedBy(c.add) {
			continue
		}
		if _, ok := after[c.add.ID]; !ok && get(c.add.ID) == nil {
			added = append(added, c.add.ID)
		}
		after[c.add.ID], changed = c.add, true
	}
	if !changed {
		return registered, false
	}
	next = registered[:0]
	for _, s := range registered {
		if a, ok := after[s.ID]; !ok {
			next = append(next, s)
		} else if a != nil {
			next = append(next, *a)
		}
	}
	for _, id := range added {
		if a := after[id]; a != nil {
			next = append(next, *a)
		}
	}
	return next, true
}

// apply makes c, saved, in the pool and broadcasts it. Called with m.mu
// held.
func (m *Manager) apply(c *change) {
	if c.add != nil {
		added, msgs := m.pool.Add(*c.add)
		s := m.pool.Get(c.add.ID)
		if len(msgs) > 0 {
			m.broadcastChange(msgs)
			m.recheckNow(s) // new, or its settings changed
		}
		c.added, c.changed, c.view = added, len(msgs) > 0, m.view(s)
	} else if s := m.pool.Get(c.remove); s != nil { // not removed by an earlier change
		m.stopChecks(s)
		_, msgs := m.pool.Remove(c.remove)
		m.broadcastChange(msgs)
		m.stats.forget(c.remove)
		c.changed = true
	}
	c.version = m.version
}
