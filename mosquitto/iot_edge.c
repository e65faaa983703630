/*
 * iot_edge: the broker's access rules, as a Mosquitto 2.0 plugin (API v5).
 *
 * Built by stack/services/mosquitto.py (or docker/mosquitto/Dockerfile) against the distribution's
 * mosquitto-dev headers; loaded with `plugin` in mosquitto.conf. It replaces acl_file because
 * Mosquitto 2.0's acl_file answers "allowed" to every SUBSCRIBE, so a device could join the
 * bridge's shared group and have readings dealt to it and dropped.
 *
 * Identities are certificate CNs (use_identity_as_username), client ids are forced to them
 * (use_username_as_clientid), so a session belongs to one identity.
 *
 *   device (any other CN)  publish devices/<CN>/telemetry; subscribe to nothing, read nothing
 *   <bridge_prefix>NAME    subscribe $share/GROUP/devices/+/telemetry (one level GROUP: the
 *                          product's `bridge`, or a test's or benchmark's own) and $SYS/...;
 *                          read telemetry and $SYS
 *   <operator>             subscribe and read devices/... and $SYS/...
 *   <probe>                subscribe and read $SYS/broker/uptime only (readiness checks)
 *   other svc-* names      nothing
 *
 * The telemetry gate: Mosquitto 2.0 does not save shared subscriptions, so after a restart the
 * bridge's session comes back without its subscription and a reading published before the bridge
 * subscribes again would be acknowledged to its device and matched by nobody. Until a bridge
 * identity has subscribed to a group in this run of the broker, a device's PUBLISH is refused without
 * acknowledgement (the connection closes); the device sends it again after reconnecting.
 *
 * Revocation: on every reload (SIGHUP, sent after the CRL changes) the identities listed in
 * <revoked_file>, one per line, are disconnected. The CRL refuses their next handshake.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define OPT_MAX 256

static mosquitto_plugin_id_t *plugin_id;
static char bridge_prefix[OPT_MAX] = "svc-bridge-";
static char service_prefix[OPT_MAX] = "svc-";
static char operator_name[OPT_MAX] = "operator";
static char probe_name[OPT_MAX] = "svc-probe";
static char telemetry_prefix[OPT_MAX] = "devices/";
static char telemetry_suffix[OPT_MAX] = "/telemetry";
static char revoked_file[1024] = "";

static bool gate_open;
static unsigned long refused;
static time_t refused_logged_at;

enum role { ROLE_NONE, ROLE_DEVICE, ROLE_BRIDGE, ROLE_OPERATOR, ROLE_PROBE };

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static enum role role_of(const char *username)
{
	if(username == NULL || username[0] == '\0') return ROLE_NONE;
	if(strcmp(username, operator_name) == 0) return ROLE_OPERATOR;
	if(strcmp(username, probe_name) == 0) return ROLE_PROBE;
	if(starts_with(username, bridge_prefix) && strlen(username) > strlen(bridge_prefix)) return ROLE_BRIDGE;
	if(starts_with(username, service_prefix)) return ROLE_NONE;
	return ROLE_DEVICE;
}

/* $share/<one level>/devices/+/telemetry: the only subscriptions a bridge makes to telemetry. */
static bool is_group_subscription(const char *filter)
{
	const char *group = filter + strlen("$share/"), *rest;
	size_t plen = strlen(telemetry_prefix), slen = strlen(telemetry_suffix);

	if(!starts_with(filter, "$share/")) return false;
	rest = strchr(group, '/');
	if(rest == NULL || rest == group) return false;
	for(const char *c = group; c < rest; c++){
		if(*c == '+' || *c == '#') return false;
	}
	rest++;
	return strlen(rest) == plen + 1 + slen && starts_with(rest, telemetry_prefix)
		&& rest[plen] == '+' && strcmp(rest + plen + 1, telemetry_suffix) == 0;
}

/* devices/<one level>/telemetry: what the bridge may read. */
static bool is_telemetry_topic(const char *topic)
{
	size_t plen = strlen(telemetry_prefix), slen = strlen(telemetry_suffix), tlen = strlen(topic);
	if(tlen <= plen + slen || !starts_with(topic, telemetry_prefix)) return false;
	if(strcmp(topic + tlen - slen, telemetry_suffix) != 0) return false;
	for(size_t i = plen; i < tlen - slen; i++){
		if(topic[i] == '/' || topic[i] == '+' || topic[i] == '#') return false;
	}
	return true;
}

static bool is_own_telemetry(const char *username, const char *topic)
{
	size_t plen = strlen(telemetry_prefix), ulen = strlen(username);
	return starts_with(topic, telemetry_prefix)
		&& strncmp(topic + plen, username, ulen) == 0
		&& strcmp(topic + plen + ulen, telemetry_suffix) == 0;
}

static int allow(bool yes)
{
	return yes ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	const char *topic = ed->topic;
	(void)event;
	(void)userdata;

	switch(role_of(username)){
		case ROLE_DEVICE:
			return allow(ed->access == MOSQ_ACL_WRITE && is_own_telemetry(username, topic));
		case ROLE_BRIDGE:
			switch(ed->access){
				case MOSQ_ACL_SUBSCRIBE:
					if(is_group_subscription(topic)){
						if(!gate_open){
							mosquitto_log_printf(MOSQ_LOG_NOTICE,
								"iot_edge: %s subscribed to %s; device telemetry is accepted from now on",
								username, topic);
						}
						gate_open = true;
						return MOSQ_ERR_SUCCESS;
					}
					return allow(starts_with(topic, "$SYS/"));
				case MOSQ_ACL_READ:
					return allow(is_telemetry_topic(topic) || starts_with(topic, "$SYS/"));
				case MOSQ_ACL_UNSUBSCRIBE:
					return MOSQ_ERR_SUCCESS;
				default:
					return MOSQ_ERR_ACL_DENIED;
			}
		case ROLE_OPERATOR:
			switch(ed->access){
				case MOSQ_ACL_SUBSCRIBE:
				case MOSQ_ACL_READ:
					return allow(starts_with(topic, telemetry_prefix) || starts_with(topic, "$SYS/"));
				case MOSQ_ACL_UNSUBSCRIBE:
					return MOSQ_ERR_SUCCESS;
				default:
					return MOSQ_ERR_ACL_DENIED;
			}
		case ROLE_PROBE:
			return allow((ed->access == MOSQ_ACL_SUBSCRIBE || ed->access == MOSQ_ACL_READ)
				&& strcmp(topic, "$SYS/broker/uptime") == 0);
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	time_t now;
	(void)event;
	(void)userdata;

	if(gate_open || role_of(mosquitto_client_username(ed->client)) != ROLE_DEVICE){
		return MOSQ_ERR_SUCCESS;
	}
	refused++;
	now = time(NULL);
	if(now - refused_logged_at >= 10){
		refused_logged_at = now;
		mosquitto_log_printf(MOSQ_LOG_WARNING,
			"iot_edge: no bridge has subscribed since the broker started; refused %lu device "
			"publishes so far, unacknowledged (latest from %s)", refused,
			mosquitto_client_id(ed->client));
	}
	/* Neither success nor ACL_DENIED: Mosquitto closes the connection and sends no PUBACK. */
	return MOSQ_ERR_ADMINISTRATIVE_ACTION;
}

static void kick_revoked(void)
{
	char line[OPT_MAX];
	FILE *fp;
	int kicked = 0;

	if(revoked_file[0] == '\0') return;
	fp = fopen(revoked_file, "r");
	if(fp == NULL) return; /* nothing revoked yet */
	while(fgets(line, sizeof(line), fp)){
		line[strcspn(line, "\r\n")] = '\0';
		if(line[0] == '\0' || line[0] == '#') continue;
		mosquitto_kick_client_by_username(line, false);
		kicked++;
	}
	fclose(fp);
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
		"iot_edge: disconnected any open connection of %d revoked identities (%s)", kicked, revoked_file);
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	kick_revoked();
	/* Deferring lets any other plugin see the reload too. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int copy_opt(char *dst, size_t size, const char *value, const char *key)
{
	if(strlen(value) >= size){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iot_edge: plugin_opt_%s is too long", key);
		return MOSQ_ERR_INVAL;
	}
	strcpy(dst, value);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	static const struct { const char *key; char *dst; size_t size; } known[] = {
		{"bridge_prefix", bridge_prefix, sizeof(bridge_prefix)},
		{"service_prefix", service_prefix, sizeof(service_prefix)},
		{"operator", operator_name, sizeof(operator_name)},
		{"probe", probe_name, sizeof(probe_name)},
		{"telemetry_prefix", telemetry_prefix, sizeof(telemetry_prefix)},
		{"telemetry_suffix", telemetry_suffix, sizeof(telemetry_suffix)},
		{"revoked_file", revoked_file, sizeof(revoked_file)},
	};
	(void)userdata;

	for(int i = 0; i < option_count; i++){
		bool found = false;
		for(size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++){
			if(strcmp(options[i].key, known[k].key) == 0){
				if(copy_opt(known[k].dst, known[k].size, options[i].value, options[i].key)) return MOSQ_ERR_INVAL;
				found = true;
			}
		}
		if(!found){
			mosquitto_log_printf(MOSQ_LOG_ERR, "iot_edge: unknown option plugin_opt_%s", options[i].key);
			return MOSQ_ERR_INVAL;
		}
	}
	if(bridge_prefix[0] == '\0' || !starts_with(bridge_prefix, service_prefix)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iot_edge: bridge_prefix must start with service_prefix");
		return MOSQ_ERR_INVAL;
	}
	plugin_id = identifier;
	gate_open = false;
	refused = 0;
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO,
		"iot_edge: devices publish %s<CN>%s; %s* subscribe $share/GROUP/%s+%s; device telemetry "
		"refused until one has", telemetry_prefix, telemetry_suffix, bridge_prefix,
		telemetry_prefix, telemetry_suffix);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	return MOSQ_ERR_SUCCESS;
}
