# services.flakeport: flakeport as a systemd service that builds through the
# nix-daemon as its own unprivileged user.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.flakeport;
  inherit (lib) mkEnableOption mkOption mkIf types optional optionalAttrs escapeShellArgs;
  portOf = address: lib.toInt (lib.last (lib.splitString ":" address));
in
{
  options.services.flakeport = {
    enable = mkEnableOption "flakeport, a pull-only OCI registry that builds images on demand with Nix";

    package = mkOption {
      type = types.package;
      default = pkgs.flakeport;
      defaultText = "pkgs.flakeport (from flakeport's overlays.default)";
      description = "The flakeport package.";
    };

    flake = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "github:org/repo";
      description = "Flake whose image outputs are served by name.";
    };

    packages = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "github:NixOS/nixpkgs/nixos-25.05";
      description = "Package set for Nixery-style names (shell/curl/jq): a flake reference, a path or a git URL.";
    };

    listen = mkOption {
      type = types.str;
      default = "0.0.0.0:5000";
      description = "Address and port to listen on.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/flakeport";
      description = "GC roots of builds, the digest index and manifests.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the listen port in the firewall.";
    };

    snapshotter = {
      enable = mkEnableOption ''
        the containerd snapshotter (`flakeport snapshotter`): layers this
        flakeport served are made from /nix/store instead of being fetched
        and unpacked. A unit of its own, started before containerd, and a
        proxy plugin "flakeport" in virtualisation.containerd.settings'';
      cri = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Make it CRI's snapshotter (kubelet's pulls and pods). When it is
          down, containerd starts no pod at all: see the README.'';
      };
      socket = mkOption {
        type = types.str;
        default = "/run/flakeport/snapshotter.sock";
        description = "The unix socket containerd dials.";
      };
      root = mkOption {
        type = types.str;
        default = "/nix/var/flakeport/snapshotter";
        description = "Where snapshots are kept: on the filesystem of /nix/store, so that layers are hard links.";
      };
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--manifest-ttl" "300" "--compression" "gzip" ];
      description = "More flakeport flags (see flakeport --help).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.flake != null || cfg.packages != null;
        message = "services.flakeport: set flake, packages, or both.";
      }
      {
        assertion = builtins.any (u: u == "*" || u == "flakeport" || u == "@flakeport")
          (config.nix.settings.allowed-users or [ "*" ]);
        message = ''services.flakeport: nix.settings.allowed-users is set without "flakeport"; add it (flakeport builds through the nix-daemon as that user).'';
      }
    ];

    users.users.flakeport = {
      isSystemUser = true;
      group = "flakeport";
      home = cfg.stateDir;
    };
    users.groups.flakeport = { };

    # Builds go through the nix-daemon as this user; allowed-users is enough
    # (flakeport passes no settings that need a trusted user). Added at the
    # default's own priority, so it joins the default [ "*" ] instead of
    # replacing it (which would lock every other user out of the daemon).
    # A host that sets its own list must name flakeport: asserted above.
    nix.settings.allowed-users = lib.mkOptionDefault [ "flakeport" ];

    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0750 flakeport flakeport -" ];

    systemd.services.flakeport = {
      description = "flakeport OCI registry";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      wants = [ "network-online.target" ];
      path = [ config.nix.package pkgs.git ];
      environment = {
        FLAKEPORT_LISTEN = cfg.listen;
        FLAKEPORT_STATE_DIR = cfg.stateDir;
        NIX_REMOTE = "daemon";
      } // optionalAttrs (cfg.packages != null) { FLAKEPORT_PACKAGES = cfg.packages; };
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/flakeport serve ${escapeShellArgs (optional (cfg.flake != null) cfg.flake ++ cfg.extraArgs)}";
        User = "flakeport";
        Group = "flakeport";
        Restart = "on-failure";
        # flakeport drains streams on SIGTERM (--shutdown-grace, 30 s).
        TimeoutStopSec = 45;
        ReadWritePaths = [ cfg.stateDir ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictSUIDSGID = true;
        RestrictRealtime = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        CapabilityBoundingSet = "";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        UMask = "0027";
      };
    };

    # Root: it gives a layer's files their owners and makes GC roots. It
    # reads the registry's state dir, and takes NixOS's read-only bind
    # mount off /nix/store in a mount namespace of its own.
    systemd.services.flakeport-snapshotter = mkIf cfg.snapshotter.enable {
      description = "flakeport containerd snapshotter";
      wantedBy = [ "multi-user.target" ];
      before = [ "containerd.service" ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/flakeport snapshotter ${escapeShellArgs [
          "--registry-state" cfg.stateDir "--socket" cfg.snapshotter.socket "--root" cfg.snapshotter.root ]}";
        Restart = "always";
        # Stop the server, not the containers' mounts (they are the kernel's).
        KillMode = "process";
      };
    };
    virtualisation.containerd.settings = mkIf cfg.snapshotter.enable ({
      proxy_plugins.flakeport = {
        type = "snapshot";
        address = cfg.snapshotter.socket;
        exports.root = cfg.snapshotter.root;
      };
    } // optionalAttrs cfg.snapshotter.cri {
      plugins."io.containerd.grpc.v1.cri".containerd.snapshotter = "flakeport";
    });

    networking.firewall.allowedTCPPorts =
      if cfg.openFirewall
      then [ (portOf cfg.listen) ]
      else [ ];
  };
}
