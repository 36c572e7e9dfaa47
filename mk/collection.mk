# The flightctl.dr Ansible collection: build, install, lint, tests, demo.
# Included by the top-level Makefile (MODULES, VERSION, LDFLAGS, GO come from there).

COLLECTION_ARCHS   := amd64 arm64
COLLECTION_SRC     := collection
COLLECTION_ROOT    := build/ansible_collections
COLLECTION_DIR     := $(COLLECTION_ROOT)/flightctl/dr
COLLECTION_INSTALL := build/installed
# The per-architecture multicall binaries; outside plugins/modules/, since they are no modules
# of their own (plugins/plugin_utils/arch_dispatch.py finds them there).
COLLECTION_BINARIES := plugins/module_binaries
# Galaxy refuses uploads over 20 MB.
COLLECTION_MAX_BYTES := 20971520
# A release tag (v1.2.3) gives the collection its version; otherwise galaxy.yml's number.
COLLECTION_VERSION := $(shell v='$(VERSION)'; v=$${v#v}; \
  if [[ $$v =~ ^[0-9]+\.[0-9]+\.[0-9]+$$ ]]; then echo $$v; \
  else sed -n 's/^version: *"\{0,1\}\([0-9][0-9.]*\).*/\1/p' galaxy.yml; fi)
COLLECTION_TARBALL := dist/flightctl-dr-$(COLLECTION_VERSION).tar.gz

.PHONY: collection collection-install demo molecule sanity-ansible

## collection: cross-compile the modules and build the Galaxy tarball in dist/
collection:
	@rm -rf $(COLLECTION_DIR) && mkdir -p $(COLLECTION_DIR) dist
	cp -a $(COLLECTION_SRC)/. $(COLLECTION_DIR)/
	sed 's/^version: .*/version: $(COLLECTION_VERSION)/' galaxy.yml > $(COLLECTION_DIR)/galaxy.yml
	cp CHANGELOG.md $(COLLECTION_DIR)/CHANGELOG.md
	@# The sanity ignore file ships with the collection (ansible-test sanity on the extracted
	@# tarball reads it); lines for files a partial build lacks are left out. Every line must
	@# be on the certification allow-list (scripts/ansible-sanity.sh refuses any other).
	@mkdir -p $(COLLECTION_DIR)/tests/sanity; for f in tests/sanity/ignore-*.txt; do \
	  while read -r path rest; do [ -e "$(COLLECTION_DIR)/$$path" ] && printf '%s %s\n' "$$path" "$$rest"; done \
	    < $$f > $(COLLECTION_DIR)/tests/sanity/$$(basename $$f); done
	@# Licence texts of every Go module linked into the binaries, from the module cache.
	$(GO) run ./hack/notices -o $(COLLECTION_DIR)/THIRD_PARTY_NOTICES ./modules/...
	@mkdir -p $(COLLECTION_DIR)/playbooks
	cp playbooks/dr-backup.yml $(COLLECTION_DIR)/playbooks/dr_backup.yml
	cp playbooks/dr-restore.yml $(COLLECTION_DIR)/playbooks/dr_restore.yml
	cp playbooks/dr-drill.yml $(COLLECTION_DIR)/playbooks/dr_drill.yml
	@set -e; present=; missing=; for m in $(MODULES); do \
	  if [ -d modules/$$m ]; then present="$$present $$m"; continue; fi; \
	  missing="$$missing $$m"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "collection: no source for$$missing (modules/<name>): the collection needs all of $(MODULES)" >&2; \
	  exit 1; \
	fi; \
	bash scripts/multicall.sh build/_multicall $$present; \
	mkdir -p $(COLLECTION_DIR)/$(COLLECTION_BINARIES); \
	for a in $(COLLECTION_ARCHS); do \
	  echo "  GO   flightctl_dr linux/$$a ($$present )"; \
	  GOOS=linux GOARCH=$$a $(GOBUILD) -o $(COLLECTION_DIR)/$(COLLECTION_BINARIES)/flightctl_dr_linux_$$a ./build/_multicall/cmd; \
	done
	ansible-galaxy collection build --force --output-path dist $(COLLECTION_DIR)
	@size=$$(stat -c %s $(COLLECTION_TARBALL)); \
	  echo "collection: $(COLLECTION_TARBALL) is $$size bytes (limit $(COLLECTION_MAX_BYTES))"; \
	  if [ $$size -gt $(COLLECTION_MAX_BYTES) ]; then \
	    echo "collection: $(COLLECTION_TARBALL) is over Galaxy's 20 MB limit" >&2; exit 1; fi
	@contents=$$(tar tzf $(COLLECTION_TARBALL)); for f in $(COLLECTION_ARCHS:%=$(COLLECTION_BINARIES)/flightctl_dr_linux_%) \
	  $(MODULES:%=plugins/modules/%.py) $(MODULES:%=plugins/modules/%.yml) $(MODULES:%=plugins/action/%.py) playbooks/dr_backup.yml playbooks/dr_restore.yml playbooks/dr_drill.yml meta/runtime.yml THIRD_PARTY_NOTICES; do \
	  grep -qx "$$f" <<<"$$contents" || { echo "collection: $(COLLECTION_TARBALL) lacks $$f" >&2; exit 1; }; done; \
	  for f in $$(grep '^plugins/modules/.' <<<"$$contents"); do m=$${f#plugins/modules/}; m=$${m%.*}; \
	    [[ " $(MODULES) " == *" $$m "* && ( $$f == *.py || $$f == *.yml ) ]] || { echo "collection: $(COLLECTION_TARBALL) has $$f, which is no module of $(MODULES) nor its documentation: ansible-doc and ansible-test would take it for an undocumented module" >&2; exit 1; }; done
	@# Lets `ansible-playbook playbooks/dr-backup.yml` find the collection from a checkout.
	@mkdir -p playbooks/collections/ansible_collections/flightctl
	@ln -sfn ../../../../$(COLLECTION_DIR) playbooks/collections/ansible_collections/flightctl/dr

## collection-install: install the tarball into build/installed (what the tests run)
collection-install: collection
	rm -rf $(COLLECTION_INSTALL)
	ansible-galaxy collection install --force -p $(COLLECTION_INSTALL) $(COLLECTION_TARBALL)

## demo: sandbox estate, backup, disaster, restore, report; stops everything at the end
## (ESTATE=kubernetes: the Kubernetes form of the sandbox)
demo:
	ESTATE=$(ESTATE) bash scripts/demo.sh

## molecule: the podman_host scenario, driven with ansible-playbook in molecule's order
molecule: collection-install
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash scripts/molecule.sh podman_host

sanity-ansible: collection
	bash scripts/ansible-sanity.sh $(COLLECTION_DIR)

## test-ansible: docs, integration targets and the molecule scenario, from the installed
## collection, then the Ansible linters
test-ansible:: collection-install
	@set -e; export ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL); \
	for m in $(MODULES); do [ -d modules/$$m ] || continue; \
	  ansible-doc flightctl.dr.$$m | grep -q "^> FLIGHTCTL.DR.$$(echo $$m | tr a-z A-Z) " || { echo "ansible-doc flightctl.dr.$$m shows no documentation" >&2; exit 1; }; \
	  echo "ansible-doc flightctl.dr.$$m: ok"; done; \
	for r in backup restore devprep offhost timer cronjob drill; do \
	  ansible-doc -t role flightctl.dr.$$r | grep -q "ENTRY POINT: main" || { echo "ansible-doc -t role flightctl.dr.$$r shows no argument spec" >&2; exit 1; }; \
	  echo "ansible-doc -t role flightctl.dr.$$r: ok"; done
	python3 tests/sanity/known_variables.py
	bash scripts/tarball-check.sh $(COLLECTION_TARBALL)
	python3 tests/aap/check.py
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) ansible-playbook --syntax-check aap/configure.yml aap/playbooks/dr_backup.yml aap/playbooks/dr_restore.yml aap/playbooks/dr_drill.yml
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash tests/integration/run.sh
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash scripts/molecule.sh podman_host
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash tests/integration/fleet.sh
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash tests/integration/trust.sh
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash tests/integration/encryption.sh
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash tests/integration/kubernetes.sh
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_INSTALL) bash scripts/molecule.sh kubernetes
	@$(MAKE) --no-print-directory lint-ansible

## lint-ansible: ansible-lint (production profile), yamllint, ansible-test sanity
lint-ansible:: collection
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build ansible-lint
	yamllint -s .
	bash scripts/ansible-sanity.sh $(COLLECTION_DIR)
