#!/bin/sh
# Start Mosquitto with the dynamic security plugin, creating its file with the admin login
# (MQTT_ADMIN_USERNAME / MQTT_ADMIN_PASSWORD) the first time. Later starts keep the file:
# change the admin password with `mosquitto_ctrl dynsec setClientPassword`.
set -eu
file=/mosquitto/data/dynamic-security.json
if [ ! -s "$file" ]; then
    : "${MQTT_ADMIN_PASSWORD:?Set MQTT_ADMIN_PASSWORD}"
    printf '%s\n%s\n' "$MQTT_ADMIN_PASSWORD" "$MQTT_ADMIN_PASSWORD" |
        mosquitto_ctrl dynsec init "$file" "${MQTT_ADMIN_USERNAME:-homepot-admin}" >/dev/null
    chown mosquitto:mosquitto "$file"
fi
exec mosquitto -c /mosquitto/config/mosquitto.conf
