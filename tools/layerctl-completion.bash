# bash completion for layerctl (installed by tools/setup as /etc/bash_completion.d/layerctl)
_layerctl() {
    local cur prev words cword
    _init_completion 2>/dev/null || { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; }
    local cmds="init pull push images inspect rmi gc fsck create ps mount umount rm mount-image commit snapshot rollback"
    local root=()
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == --root ]]; then root=(--root "${COMP_WORDS[i+1]}"); fi
    done
    local cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in --root) ((i++));; -*) ;; *) cmd=${COMP_WORDS[i]}; break;; esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$cmds --root --debug --help --version" -- "$cur"))
        return
    fi
    _layerctl_images() { layerctl "${root[@]}" images 2>/dev/null | awk 'NR>1 {print $1}'; }
    _layerctl_containers() { layerctl "${root[@]}" ps 2>/dev/null | awk 'NR>1 && $1 != "(image)" {print $1}'; }
    case $cmd in
        inspect|rmi|push|create|mount-image|commit)
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--json --bundle --upper-quota --tty --root" -- "$cur"))
            elif [[ $cmd == commit ]]; then
                COMPREPLY=($(compgen -W "$(_layerctl_containers)" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$(_layerctl_images)" -- "$cur"))
            fi ;;
        mount|umount|rm|snapshot|rollback)
            COMPREPLY=($(compgen -W "$(_layerctl_containers) --all --force" -- "$cur")) ;;
        pull)
            COMPREPLY=($(compgen -W "oci: oci-archive: docker-archive: --name --platform -q" -- "$cur")) ;;
        init)
            COMPREPLY=($(compgen -W "--backend --zfs-dataset dir zfs" -- "$cur")) ;;
    esac
}
complete -F _layerctl layerctl
